// ckpt-index serve: live pages. A page with an element marked data-live polls /api/version (a
// small fingerprint of the index, answered 304 while it is unchanged) and, when it changes,
// fetches the page's own URL again and swaps in the fresh data-live elements (same id), keeping
// the ticked compare boxes and what is being typed in the filter form (outside them).
// An element marked data-live="json" is its page script's own: live.js only announces the change
// (a "ckpt-index:changed" event on document) and the script fetches its JSON and redraws in place
// (the Experiment and Compare charts, which keep the chosen metric and axis that way).
"use strict";
(() => {
  const PERIOD_MS = 2000;
  let etag = null;
  let known = null;
  let busy = false;

  const regions = () =>
    Array.from(document.querySelectorAll('[data-live][id]:not([data-live="json"])'));

  async function refresh() {
    document.dispatchEvent(new CustomEvent("ckpt-index:changed"));
    if (regions().length === 0) return;
    const reply = await fetch(window.location.href, { headers: { accept: "text/html" } });
    if (!reply.ok) return;
    const fresh = new DOMParser().parseFromString(await reply.text(), "text/html");
    const ticked = new Set(
      Array.from(document.querySelectorAll('input[name="path"]:checked')).map((box) => box.value),
    );
    for (const region of regions()) {
      const replacement = fresh.getElementById(region.id);
      if (replacement) region.replaceWith(document.importNode(replacement, true));
    }
    for (const box of document.querySelectorAll('input[name="path"]')) {
      if (ticked.has(box.value)) box.checked = true;
    }
    document.dispatchEvent(new CustomEvent("ckpt-index:refreshed"));
  }

  async function poll() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const headers = etag ? { "if-none-match": etag } : {};
      const reply = await fetch("/api/version", { headers, cache: "no-store" });
      if (reply.status === 200) {
        etag = reply.headers.get("etag");
        const { version } = await reply.json();
        if (known !== null && version !== known) await refresh();
        known = version;
        document.documentElement.dataset.liveVersion = version; // what the page shows
      }
    } catch (_error) {
      // The server is away (restarting): try again at the next tick.
    } finally {
      busy = false;
    }
  }

  function start() {
    if (!document.querySelector("[data-live]")) return;
    poll();
    window.setInterval(poll, PERIOD_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
