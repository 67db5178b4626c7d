// The "live updates disconnected" banner: shown while ANY websocket on the page is down.
// A close with an application code (4000+, e.g. 4403 not allowed, 4404 unknown order) is
// final: htmx does not reconnect then, so the banner says to reload instead.
(function () {
  var down = new Set();
  var finalClose = false;

  function render() {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.hidden = down.size === 0;
    el.textContent = finalClose
      ? "Live updates stopped. Reload the page to see the latest state."
      : "Live updates disconnected: reconnecting…";
  }
  function socketOf(event) {
    return (event.detail && event.detail.elt) || event.target;
  }
  document.addEventListener("htmx:wsOpen", function (event) {
    down.delete(socketOf(event));
    render();
  });
  document.addEventListener("htmx:wsClose", function (event) {
    var code = event.detail && event.detail.event && event.detail.event.code;
    if (code >= 4000) finalClose = true;
    down.add(socketOf(event));
    render();
  });
  document.addEventListener("htmx:wsError", function (event) {
    down.add(socketOf(event));
    render();
  });
})();

// Timeline rows never twice: a saga event can reach the page both in the connect snapshot
// and as its own socket frame (the snapshot is read while the event is being broadcast).
// Rows carry the SagaEvent's id; an appended row (data-append-once) whose id is already on
// the page is dropped. Rows of a section sent whole replace their old selves: kept.
(function () {
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var fragment = event.detail && event.detail.fragment;
    if (!fragment || !fragment.querySelectorAll) return;
    fragment.querySelectorAll("li.saga-event[data-append-once]").forEach(function (row) {
      if (document.getElementById(row.id)) row.remove();
    });
  });
})();
