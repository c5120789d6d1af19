// detektor-tracker web UI: the only script the pages load (CSP script-src 'self').
// A <main data-poll="URL" data-live="1"> is re-read from URL (the server renders
// the same <main> alone for ?part=main) and swapped in, without reloading the
// page, until the new one says data-live="0" (a frame that reached a final
// state). Polling, not server-sent events: one short GET per second at most.
"use strict";

(function () {
  function interval(main, startedAt) {
    var given = parseInt(main.getAttribute("data-interval") || "", 10);
    if (given > 0) return given;
    // A frame: every second for two minutes, then every five seconds.
    return Date.now() - startedAt < 120000 ? 1000 : 5000;
  }

  function follow(main) {
    var startedAt = Date.now();
    function tick() {
      var current = document.querySelector("main[data-poll]");
      if (!current || current.getAttribute("data-live") !== "1") return;
      fetch(current.getAttribute("data-poll"), {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
        cache: "no-store",
      })
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.text();
        })
        .then(function (text) {
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.querySelector("main[data-poll]");
          if (!fresh) throw new Error("no <main> in the answer");
          var latest = document.querySelector("main[data-poll]");
          latest.replaceWith(document.importNode(fresh, true));
          document.body.setAttribute("data-updated", String(Date.now()));
        })
        .catch(function (err) {
          document.body.setAttribute("data-poll-error", String(err));
        })
        .finally(function () {
          var next = document.querySelector("main[data-poll]");
          if (next && next.getAttribute("data-live") === "1") {
            window.setTimeout(tick, interval(next, startedAt));
          }
        });
    }
    window.setTimeout(tick, interval(main, startedAt));
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.querySelector("main[data-poll]");
    if (main && main.getAttribute("data-live") === "1") follow(main);
  });
})();
