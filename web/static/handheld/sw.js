// The handheld page's service worker: it keeps the app shell so that the page opens and reloads with the
// box out of reach. The box fills in VERSION (a hash of the shell's files) and SHELL when it serves this
// file, so a box upgraded in place serves a changed worker, which the browser installs beside the old one
// and the page offers to reload into. API requests are never answered from here: counts come from the
// page's IndexedDB queue and the box, never from a cache that could be stale.

const VERSION = "__VERSION__";
const SHELL = __SHELL__;
const CACHE = `stockverify-handheld-${VERSION}`;
const LAZY = `stockverify-handheld-lazy-${VERSION}`; // the camera decoder, cached the first time it is used

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE).then((cache) => cache.addAll(SHELL.map((url) => new Request(url, { cache: "reload" })))),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith("stockverify-handheld-") && name !== CACHE && name !== LAZY) await caches.delete(name);
      }
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith("/api/")) return;
  if (request.mode === "navigate" && url.pathname.startsWith("/handheld")) {
    event.respondWith(caches.match("/handheld/", { cacheName: CACHE }).then((hit) => hit || fetch(request)));
    return;
  }
  if (SHELL.includes(url.pathname)) {
    event.respondWith(caches.match(url.pathname, { cacheName: CACHE }).then((hit) => hit || fetch(request)));
    return;
  }
  if (url.pathname.startsWith("/static/vendor/")) {
    event.respondWith(
      caches.open(LAZY).then(async (cache) => {
        const hit = await cache.match(request);
        if (hit) return hit;
        const answer = await fetch(request);
        if (answer.ok) cache.put(request, answer.clone());
        return answer;
      }),
    );
  }
});
