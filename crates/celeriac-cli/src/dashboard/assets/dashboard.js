// Celeriac dashboard: swaps in the live fragments the server sends as
// server-sent events; everything else works without JavaScript.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.stream && window.EventSource) {
    const source = new EventSource(live.dataset.stream);
    source.addEventListener("update", (event) => {
      live.innerHTML = event.data;
    });
  }
});
