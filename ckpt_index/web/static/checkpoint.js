// The Checkpoint page's copy-path button (the clipboard API; the path is in data-path).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("copy-path");
    var status = document.getElementById("copy-status");
    if (!button) return;
    button.dataset.ready = "1";
    button.addEventListener("click", function () {
      var path = button.dataset.path || "";
      function said(text) { if (status) status.textContent = text; }
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(path).then(
          function () { said("copied"); },
          function () { said("copy failed: select the path and copy it"); }
        );
      } else {
        said("no clipboard here: select the path and copy it");
      }
    });
  });
})();
