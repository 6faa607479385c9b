// The held queue updates by itself: every 5 seconds the rows are fetched again and replaced
// when they changed. Without JavaScript the page is the same, reloaded by hand.
(function () {
  var body = document.getElementById("held-rows");
  if (!body || !window.fetch) { return; }
  var last = body.innerHTML.trim();
  function refresh() {
    fetch("/held/rows", {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null && html.trim() !== last) { body.innerHTML = html; last = html.trim(); }
      })
      .catch(function () {})
      .then(function () { setTimeout(refresh, 5000); });
  }
  setTimeout(refresh, 5000);
})();
