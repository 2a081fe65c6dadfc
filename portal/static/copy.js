// Copy-to-clipboard for the buttons that name a field in data-copy-target (the new API key's secret).
// A static file, so the Content-Security-Policy needs no 'unsafe-inline'; without JavaScript the buttons stay
// hidden and the secret can be selected and copied by hand.
"use strict";

(function () {
  function setup(button) {
    var target = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.getElementById(button.getAttribute("data-copy-status"));
    if (!target || !navigator.clipboard) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(target.value || target.textContent).then(
        function () {
          if (status) { status.textContent = "Copied to the clipboard."; }
        },
        function () {
          target.select();
          if (status) { status.textContent = "Copying failed: the secret is selected, copy it by hand."; }
        }
      );
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var buttons = document.querySelectorAll("button[data-copy-target]");
    for (var i = 0; i < buttons.length; i++) {
      setup(buttons[i]);
    }
  });
})();
