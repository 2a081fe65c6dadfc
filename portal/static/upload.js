// The model upload form with a progress bar. The file goes to the JSON API's upload route
// (POST /api/v1/orgs/<org>/models?name=&version=) by XMLHttpRequest, with the session cookie and the form's
// CSRF token in X-CSRF-Token; the page shows the bytes sent, then the server's check of the model, then starts
// the conversion chosen on the form (POST /api/v1/orgs/<org>/jobs) and opens its job page, which follows it.
// A static file, so the Content-Security-Policy needs no 'unsafe-inline'. Without JavaScript the form posts
// as multipart to the portal, which streams it into the same upload service.
"use strict";

(function () {
  function bytes(n) {
    return n.toLocaleString("en") + " bytes";
  }

  function percent(done, total) {
    return total > 0 ? Math.floor((100 * done) / total) : 0;
  }

  function messageOf(status, text) {
    try {
      var body = JSON.parse(text);
      if (body && body.error && body.error.message) {
        return body.error.message;
      }
    } catch (e) {
      // not JSON: say the status
    }
    return "the server answered " + status;
  }

  function setup(form) {
    var file = document.getElementById("upload-file");
    var box = document.getElementById("upload-progress-box");
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    var submit = document.getElementById("upload-submit");
    var result = document.getElementById("upload-result");
    var resultLink = document.getElementById("upload-result-link");
    if (!file || !box || !bar || !status || !submit || !window.XMLHttpRequest || !window.fetch) {
      return; // the plain form still works
    }
    var limit = parseInt(form.getAttribute("data-max-bytes") || "", 10);
    var token = form.elements.namedItem("csrf_token").value;

    function field(name) {
      var element = form.elements.namedItem(name);
      return element ? element.value : "";
    }

    function say(text, failed) {
      status.textContent = text;
      status.className = failed ? "field-error" : "";
      if (failed) {
        submit.disabled = false;
      }
    }

    function showResult(url) {
      if (result && resultLink) {
        resultLink.href = url;
        result.hidden = false;
      }
    }

    function startJob(made, target, versionPage) {
      say(made.id + " is uploaded and " + made.state + ". Starting the conversion…");
      fetch(form.getAttribute("data-api-jobs"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": token },
        body: JSON.stringify({
          source: made.id,
          target: target,
          output_name: made.name,
          output_version: (made.version + "-" + target).slice(0, 64)
        })
      }).then(function (response) {
        return response.text().then(function (text) {
          if (response.status !== 201) {
            say(made.id + " is uploaded, but the conversion did not start: " + messageOf(response.status, text) + ".", true);
            showResult(versionPage);
            return;
          }
          var job = JSON.parse(text);
          say("The conversion job is " + job.state + ". Opening its page…");
          window.location.assign(form.getAttribute("data-job-page") + encodeURIComponent(job.id));
        });
      }, function () {
        say(made.id + " is uploaded, but the conversion could not be started: the connection failed.", true);
        showResult(versionPage);
      });
    }

    form.addEventListener("submit", function (event) {
      var chosen = file.files && file.files[0];
      if (!chosen) {
        return; // the browser's own check, or the server's, says what is missing
      }
      event.preventDefault();
      var target = field("convert_to");
      box.hidden = false;
      if (result) {
        result.hidden = true;
      }
      if (!isNaN(limit) && chosen.size > limit) {
        say("The file has " + bytes(chosen.size) + "; this plan takes files up to " + bytes(limit) + ".", true);
        return;
      }
      var query = "name=" + encodeURIComponent(field("name")) + "&version=" + encodeURIComponent(field("version"));
      if (field("description")) {
        query += "&description=" + encodeURIComponent(field("description"));
      }
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("data-api") + "?" + query);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", token);
      bar.max = chosen.size || 1;
      bar.value = 0;
      xhr.upload.addEventListener("progress", function (e) {
        var total = e.lengthComputable ? e.total : chosen.size;
        bar.max = total || 1;
        bar.value = e.loaded;
        bar.textContent = percent(e.loaded, total) + "%";
        say("Sent " + bytes(e.loaded) + " of " + bytes(total) + " (" + percent(e.loaded, total) + "%).");
      });
      xhr.upload.addEventListener("load", function () {
        bar.removeAttribute("value"); // indeterminate while the server checks the model
        say("Sent. The server is checking and inspecting the model…");
      });
      xhr.addEventListener("load", function () {
        if (xhr.status !== 201) {
          bar.value = 0;
          say("The upload was refused: " + messageOf(xhr.status, xhr.responseText) + ".", true);
          return;
        }
        var made = JSON.parse(xhr.responseText);
        var versionPage = form.getAttribute("data-models-page") + encodeURIComponent(made.name) +
          "/versions/" + encodeURIComponent(made.version);
        if (target) {
          startJob(made, target, versionPage);
          return;
        }
        say(made.id + " is uploaded and " + made.state + ". Opening it…");
        window.location.assign(versionPage);
      });
      xhr.addEventListener("error", function () {
        say("The connection failed before the server answered; the models page tells whether the upload was published.", true);
      });
      submit.disabled = true;
      say("Starting the upload…");
      xhr.send(chosen);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) {
      setup(form);
    }
  });
})();
