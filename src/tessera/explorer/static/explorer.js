// Tessera explorer: keep the server-rendered page live. One EventSource per page; each
// "snapshot" event carries the page's changed fragments, rendered by the gateway with the
// same code as the page itself, so a live page always equals a reloaded one.
(function () {
  "use strict";
  if (!window.EventSource) return; // the page stays correct, only not live
  var win = document.body.getAttribute("data-window") || "24h";
  var provider = document.body.getAttribute("data-provider");
  var page = document.body.getAttribute("data-page");
  if (page === "providers") return; // the list is a snapshot with filters: reload it
  var live = document.body.getAttribute("data-live") === "1";
  var model = document.body.getAttribute("data-model");
  var url = provider
    ? "/explorer/api/v1/stream?provider=" + encodeURIComponent(provider)
    : model
      ? "/explorer/api/v1/stream?model=" + encodeURIComponent(model) +
        "&window=" + encodeURIComponent(win)
      : live
      ? "/explorer/api/v1/stream?page=" + encodeURIComponent(page)
      : "/explorer/api/v1/stream?window=" + encodeURIComponent(win);
  var source = new EventSource(url);
  source.addEventListener("snapshot", function (event) {
    var message = JSON.parse(event.data);
    Object.keys(message.html).forEach(function (id) {
      var node = document.getElementById(id);
      if (node) node.innerHTML = message.html[id];
    });
    document.body.setAttribute("data-version", String(message.version));
  });
})();
