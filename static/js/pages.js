// Page behaviour that would otherwise be inline handlers (the Content-Security-Policy allows
// no inline script, no on*= attributes and no hx-on). Each hooks onto a data- attribute, so
// templates say what they want and carry no code.
(function () {
  // <input type="checkbox" data-select-all="order_ids">: ticks every input[name=order_ids].
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    var name = box.getAttribute("data-select-all");
    document.querySelectorAll('input[name="' + name + '"]').forEach(function (c) {
      c.checked = box.checked;
    });
  });

  // data-swap-errors="403 400" (no value: 400 and 403): htmx swaps these error answers in
  // (they carry the message for the user) instead of dropping them.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var holder = event.target && event.target.closest && event.target.closest("[data-swap-errors]");
    if (!holder) holder = event.detail.elt && event.detail.elt.closest && event.detail.elt.closest("[data-swap-errors]");
    if (!holder) return;
    var codes = (holder.getAttribute("data-swap-errors") || "400 403").split(/\s+/);
    if (codes.indexOf(String(event.detail.xhr.status)) !== -1) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // data-live-rows="<table id>": a live list's socket sends a row for every saga event;
  // rows not on this page are dropped (an out-of-band swap without a target would only log
  // an error), and after a reconnect the table is fetched again so nothing missed stays stale.
  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    var list = event.target && event.target.closest && event.target.closest("[data-live-rows]");
    if (!list) return;
    var m = /id="(order-row-\d+)"/.exec(event.detail.message);
    if (m && !document.getElementById(m[1])) event.preventDefault();
  });
  document.addEventListener("htmx:wsOpen", function (event) {
    var list = event.target && event.target.closest && event.target.closest("[data-live-rows]");
    if (!list) return;
    if (list.dataset.opened) {
      htmx.ajax("GET", window.location.href, {target: "#" + list.getAttribute("data-live-rows"), swap: "outerHTML"});
    }
    list.dataset.opened = "1";
  });
})();
