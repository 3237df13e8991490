// Tessera explorer: keep the server-rendered page live. One EventSource per page; each
// "snapshot" event carries the page's changed fragments, rendered by the gateway with the
// same code as the page itself, so a live page always equals a reloaded one.
(function () {
  "use strict";
  if (!window.EventSource) return; // the page stays correct, only not live
  var win = document.body.getAttribute("data-window") || "24h";
  var source = new EventSource("/explorer/api/v1/stream?window=" + encodeURIComponent(win));
  source.addEventListener("snapshot", function (event) {
    var message = JSON.parse(event.data);
    Object.keys(message.html).forEach(function (id) {
      var node = document.getElementById(id);
      if (node) node.innerHTML = message.html[id];
    });
    document.body.setAttribute("data-version", String(message.version));
  });
})();
