// A job page that follows its job: every second it reads GET /api/v1/orgs/<org>/jobs/<id> (the session
// cookie; a GET needs no CSRF token) and moves the <progress>, the status and the counts along, until the job
// succeeds (its result is linked), fails (its error is shown) or is cancelled. A static file, so the
// Content-Security-Policy needs no 'unsafe-inline'; without JavaScript the page's "Refresh" link does it.
"use strict";

(function () {
  var POLL_MS = 1000;
  var RETRY_MS = 3000;
  var MAX_FAILURES = 20; // a minute of errors in a row: stop, the refresh link still works
  var FINAL = { succeeded: true, failed: true, cancelled: true };

  function counts(progress) {
    var text = "";
    if (progress.tensors_total > 0) {
      text = (progress.tensors_done || 0).toLocaleString("en") + " of " +
        progress.tensors_total.toLocaleString("en") + " tensors";
      if (progress.bytes_total > 0) {
        text += ", " + (progress.bytes_done || 0).toLocaleString("en") + " of " +
          progress.bytes_total.toLocaleString("en") + " bytes";
      }
    }
    return text;
  }

  function follow(root) {
    var status = document.getElementById("job-status");
    var bar = document.getElementById("job-progress");
    var detail = document.getElementById("job-detail");
    var error = document.getElementById("job-error");
    var result = document.getElementById("job-result");
    var cancel = document.getElementById("job-cancel-section");
    var attempts = document.getElementById("job-attempts");
    var url = root.getAttribute("data-api");
    var failures = 0;

    function show(job) {
      var progress = job.progress || {};
      if (status.textContent !== job.state) {
        status.textContent = job.state;
        status.className = "badge badge-" + job.state;
      }
      if (attempts) {
        attempts.textContent = job.attempts + " of at most " + job.max_attempts;
      }
      var text = counts(progress);
      if (job.state === "succeeded") {
        bar.max = progress.tensors_total > 0 ? progress.tensors_total : 1;
        bar.value = bar.max;
      } else if (progress.tensors_total > 0) {
        bar.max = progress.tensors_total;
        bar.value = Math.min(progress.tensors_done || 0, progress.tensors_total);
      } else if (!FINAL[job.state]) {
        text = job.state === "queued" ? "waiting for a worker" : "starting";
      }
      bar.textContent = text;
      detail.textContent = text;
      if (job.error) {
        error.textContent = job.error;
        error.hidden = false;
      } else {
        error.hidden = true;
      }
      if (job.state === "succeeded") {
        result.hidden = false;
      }
      if (FINAL[job.state] && cancel) {
        cancel.hidden = true;
      }
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (response) {
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        return response.json();
      }).then(function (job) {
        failures = 0;
        show(job);
        if (!FINAL[job.state]) {
          window.setTimeout(poll, POLL_MS);
        }
      }).catch(function () {
        failures += 1;
        if (failures < MAX_FAILURES) {
          window.setTimeout(poll, RETRY_MS);
        } else {
          detail.textContent = "The page stopped following the job (the server did not answer); refresh it.";
        }
      });
    }

    window.setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("job");
    if (root && window.fetch && root.getAttribute("data-finished") !== "true") {
      follow(root);
    }
  });
})();
