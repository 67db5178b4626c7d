// Shows a visible banner while any websocket on the page is disconnected.
(function () {
  function banner(show) {
    var el = document.getElementById("live-status");
    if (el) el.hidden = !show;
  }
  document.addEventListener("htmx:wsOpen", function () { banner(false); });
  document.addEventListener("htmx:wsClose", function () { banner(true); });
  document.addEventListener("htmx:wsError", function () { banner(true); });
})();
