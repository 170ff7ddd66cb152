/* waconnect: the API token page. The copy button copies the new token (shown once). */
(function () {
  "use strict";
  const button = document.getElementById("copy-token");
  if (!button) return;
  const input = document.getElementById(button.dataset.target);
  button.addEventListener("click", function () {
    const done = function () {
      button.textContent = "Copied";
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () {
        input.select();
      });
    } else {
      input.select();
      document.execCommand("copy");
      done();
    }
  });
})();
