// The dashboard shell: login, the role-aware navigation, the router and the one live feed.
//
// Pages are ES modules loaded when first visited, so a person's browser only ever fetches the pages
// their role may open (a verifier never loads the run view's code, let alone its data).

import { ApiError, get, post, setToken, token, whenLoggedOut } from "./api.js";
import { watchDisk } from "./disk.js";
import { LiveFeed } from "./live.js";
import { clear, describeError, h, toast } from "./dom.js";

const PAGES = [
  { name: "floor", label: "Floor map", pattern: /^floor(?:\/([^/]+))?$/, load: () => import("./views/floor.js"), show: (ctx) => ctx.can("layout.read") },
  { name: "runs", label: "Runs", pattern: /^runs$/, load: () => import("./views/runs.js"), show: (ctx) => ctx.can("runs.read") },
  { name: "run", pattern: /^runs\/([^/]+)$/, load: () => import("./views/run.js"), show: (ctx) => ctx.can("runs.read"), nav: "runs" },
  { name: "sessions", label: "My sessions", pattern: /^sessions$/, load: () => import("./views/sessions.js"), show: (ctx) => ctx.me.role === "verifier" },
  { name: "session", pattern: /^sessions\/([^/]+)$/, load: () => import("./views/sessions.js"), show: (ctx) => ctx.can("sessions.read"), nav: "sessions" },
  { name: "conflicts", label: "Conflicts", pattern: /^conflicts$/, load: () => import("./views/conflicts.js"), show: (ctx) => ctx.can("conflicts.read") },
  { name: "devices", label: "Devices", pattern: /^devices$/, load: () => import("./views/devices.js"), show: (ctx) => ctx.can("devices.read") },
  { name: "scanners", label: "Scanners", pattern: /^scanners$/, load: () => import("./views/scanners.js"), show: (ctx) => ctx.can("scanners.read") },
  { name: "station", pattern: /^station\/([^/]+)$/, load: () => import("./views/station.js"), show: (ctx) => ctx.can("stations.view"), nav: "scanners" },
  { name: "reports", label: "Reports", pattern: /^reports(?:\/([^/]+))?(?:\/([^/]+))?$/, load: () => import("./views/reports.js"), show: (ctx) => ctx.can("reports.read") },
  { name: "hq-reports", label: "HQ reports", pattern: /^hq-reports(?:\/([^/]+))?(?:\/([^/]+))?$/, load: () => import("./views/hq_reports.js"), show: (ctx) => ctx.can("hq.stores.read") && ctx.hq },
  { name: "people", label: "People", pattern: /^people$/, load: () => import("./views/people.js"), show: (ctx) => ctx.can("users.read") },
];

const main = document.getElementById("main");
const topbar = document.getElementById("topbar");
const nav = document.getElementById("nav");
const liveDot = document.getElementById("live");
const LIVE_TEXT = { idle: "Offline", live: "Live", reconnecting: "Reconnecting…" };

let ctx = null;
let cleanup = null;
let renderSeq = 0;

const live = new LiveFeed((state) => {
  liveDot.dataset.state = state;
  liveDot.textContent = LIVE_TEXT[state] || state;
});

watchDisk(document.getElementById("disk-banner"));

function makeContext(me, hq = false) {
  const permissions = new Set(me.permissions || []);
  return { me, hq, live, main, can: (permission) => permissions.has(permission), go: (hash) => (location.hash = hash) };
}

/** The person and, for one who may read HQ's stores, whether this box is HQ (its health says its role:
 * asked there rather than of /api/hq/stores, which a store box answers with a 404). */
async function whoIsIn() {
  const me = await get("/api/auth/me");
  if (!(me.permissions || []).includes("hq.stores.read")) return makeContext(me);
  let hq = false;
  try {
    hq = (await get("/api/health")).role === "hq";
  } catch {
    hq = false;
  }
  return makeContext(me, hq);
}

async function boot() {
  whenLoggedOut((message) => showLogin(message));
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  if (!token()) return showLogin();
  try {
    ctx = await whoIsIn();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showLogin();
    return showLogin(describeError(error));
  }
  enter();
}

function enter() {
  topbar.hidden = false;
  document.getElementById("whoami").textContent = `${ctx.me.display_name} · ${ctx.me.role}`;
  live.start();
  route();
}

async function logout() {
  try {
    await post("/api/auth/logout");
  } catch {
    // Logged out locally all the same; the token expires on the box by itself.
  }
  setToken(null);
  showLogin("You are logged out.");
}

function showLogin(message = "") {
  live.stop();
  main.dataset.view = "login";
  main.dataset.ready = "1";
  if (cleanup) cleanup();
  cleanup = null;
  ctx = null;
  topbar.hidden = true;
  const error = h("p", { class: "error-text", role: "alert" }, message && !message.startsWith("You are") ? message : "");
  const note = h("p", { class: "muted", role: "status" }, message.startsWith("You are") ? message : "");
  const user = h("input", { id: "login-user", name: "username", autocomplete: "username", required: true, autocapitalize: "none" });
  const pass = h("input", { id: "login-pass", name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit" }, "Log in");
  const health = h("p", { class: "muted small" }, "Checking the box…");
  const form = h(
    "form",
    { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "StockVerify Edge"),
    h("p", { class: "muted" }, "Log in to the store's count dashboard."),
    note,
    h("label", { for: "login-user" }, "Username"),
    user,
    h("label", { for: "login-pass" }, "Password"),
    pass,
    error,
    submit,
    health,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    try {
      const answer = await post("/api/auth/login", { username: user.value, password: pass.value });
      setToken(answer.token);
      ctx = await whoIsIn();
      // replaceState, not location.hash: the route is drawn once, by enter(), not again on hashchange.
      if (!location.hash || location.hash === "#/") history.replaceState(null, "", `#/${home(ctx)}`);
      enter();
    } catch (problem) {
      error.textContent =
        problem instanceof ApiError && problem.code === "BAD_CREDENTIALS" ? "Wrong username or password." : describeError(problem);
      submit.disabled = false;
      pass.select();
    }
  });
  clear(main).append(form);
  user.focus();
  showHealth(health);
}

async function showHealth(line) {
  try {
    const health = await get("/api/health");
    line.textContent = `Box ${health.node_id} · store ${health.store_id} · version ${health.version} · database ${health.database}`;
  } catch (error) {
    line.textContent = `The box reports a problem: ${describeError(error)}`;
  }
}

function home(context) {
  return context.me.role === "verifier" ? "sessions" : "floor";
}

function drawNav(current) {
  const links = PAGES.filter((page) => page.label && page.show(ctx)).map((page) =>
    h("a", { href: `#/${page.name}`, "aria-current": page.name === current ? "page" : null }, page.label),
  );
  clear(nav).append(...links);
}

async function route() {
  if (!ctx) return;
  const path = location.hash.replace(/^#\/?/, "");
  if (!path) {
    history.replaceState(null, "", `#/${home(ctx)}`);
    route();
    return;
  }
  const seq = ++renderSeq;
  if (cleanup) cleanup();
  cleanup = null;
  let page = null;
  let match = null;
  for (const candidate of PAGES) {
    match = path.match(candidate.pattern);
    if (match) {
      page = candidate;
      break;
    }
  }
  drawNav(page ? page.nav || page.name : "");
  if (!page || !page.show(ctx)) {
    main.dataset.view = page ? "denied" : "missing";
    main.dataset.ready = "1";
  }
  if (!page) {
    clear(main).append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: `#/${home(ctx)}` }, "Back to the dashboard")));
    return;
  }
  if (!page.show(ctx)) {
    clear(main).append(h("h1", {}, "Not for your role"), h("p", {}, `A ${ctx.me.role} does not open this page.`));
    return;
  }
  clear(main).append(h("p", { class: "muted" }, "Loading…"));
  // data-view / data-ready say which page is drawn and whether it has its data (tests wait on them).
  main.dataset.view = page.name;
  main.dataset.ready = "0";
  try {
    const module = await page.load();
    if (seq !== renderSeq) return;
    const view = await module.render({ ...ctx, params: match.slice(1), page: page.name, isCurrent: () => seq === renderSeq });
    if (seq !== renderSeq) {
      if (typeof view === "function") view();
      return;
    }
    cleanup = typeof view === "function" ? view : null;
    main.dataset.ready = "1";
    main.focus({ preventScroll: true });
  } catch (error) {
    if (seq !== renderSeq) return;
    clear(main).append(h("h1", {}, "This page could not load"), h("p", { class: "error-text" }, describeError(error)));
    toast(describeError(error), "bad");
  }
}

boot();
