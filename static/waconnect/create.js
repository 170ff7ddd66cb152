/* waconnect: the create page. Records when the admin pressed "create" so the
 * detail page's QR timing can be measured (benchmarks/bench_qr_latency.py). */
(function () {
  "use strict";
  const form = document.getElementById("create-form");
  if (!form) return;
  form.addEventListener("submit", function () {
    try {
      sessionStorage.setItem("waconnect.createClickedAt", String(performance.timeOrigin + performance.now()));
    } catch (err) {
      /* storage disabled: the page works without the metric */
    }
  });
})();
