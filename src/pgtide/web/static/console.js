// pgtide web: replace the page's live region with each fragment the server pushes (SSE).
// No polling: the server sends a new fragment when its sample of the database changes.
(function () {
  "use strict";
  var main = document.getElementById("live");
  var dot = document.getElementById("live-dot");
  if (!main || !main.dataset.stream || !window.EventSource) return;
  var source = new EventSource(main.dataset.stream);
  source.addEventListener("open", function () { if (dot) dot.className = "dot on"; });
  source.addEventListener("error", function () { if (dot) dot.className = "dot off"; });
  source.addEventListener("update", function (event) {
    // keep a form the user is typing in: skip the update while one has focus
    var active = document.activeElement;
    if (active && active.form && main.contains(active) && active.type !== "submit") return;
    main.innerHTML = event.data;
    main.dataset.updates = String(Number(main.dataset.updates || 0) + 1);
  });
  window.addEventListener("beforeunload", function () { source.close(); });
})();
