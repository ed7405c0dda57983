// The velro-cache dashboard: swap in fresh figures every few seconds, no reload, no library.
(function () {
  "use strict";
  function start() {
    var root = document.getElementById("velro-dashboard");
    var live = document.getElementById("velro-live");
    if (!root || !live) return;
    var url = root.getAttribute("data-live-url");
    var seconds = parseFloat(root.getAttribute("data-refresh-seconds")) || 5;
    var stamp = document.getElementById("velro-updated");
    var refreshes = 0;
    function refresh() {
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) { if (!response.ok) throw new Error(response.status); return response.text(); })
        .then(function (html) {
          live.innerHTML = html;
          refreshes += 1;
          root.setAttribute("data-refreshes", String(refreshes));
          if (stamp) stamp.textContent = new Date().toLocaleTimeString();
        })
        .catch(function () { if (stamp) stamp.textContent = "failed at " + new Date().toLocaleTimeString(); });
    }
    window.setInterval(refresh, seconds * 1000);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
