// Talking to the box: the bearer token lives in sessionStorage (gone when the tab closes, never in a
// cookie, so no other site can make the browser use it), and every error arrives as {code, message, details}.

const TOKEN_KEY = "stockverify.token";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `the box answered ${status}`);
    this.status = status;
    this.code = body?.code || `HTTP_${status}`;
    this.details = body?.details ?? null;
  }
}

let onLoggedOut = () => {};
let onDiskRefused = () => {};

export function whenLoggedOut(callback) {
  onLoggedOut = callback;
}

// 507: the box's disk is full or read-only; the disk banner asks /api/health at once rather than at its next poll.
export function whenDiskRefused(callback) {
  onDiskRefused = callback;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export async function request(method, path, body, { blob = false } = {}) {
  const headers = { Accept: blob ? "*/*" : "application/json" };
  const held = token();
  if (held) headers.Authorization = `Bearer ${held}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let answer;
  try {
    answer = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, { code: "BOX_UNREACHABLE", message: `the box does not answer (${error.message})` });
  }
  if (answer.status === 401 && held && path !== "/api/auth/login") {
    setToken(null);
    onLoggedOut("Your login has ended; please log in again.");
  }
  if (answer.status === 507) onDiskRefused();
  if (!answer.ok) {
    let problem = null;
    try {
      problem = await answer.json();
    } catch {
      problem = null;
    }
    throw new ApiError(answer.status, problem);
  }
  if (blob) return answer.blob();
  return answer.status === 204 ? null : answer.json();
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const put = (path, body) => request("PUT", path, body);
export const patch = (path, body) => request("PATCH", path, body);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const enc = encodeURIComponent;

/** A file from the box, handed to the browser's own downloads: a plain link with a single-use stream
 * ticket (the box takes ?ticket= on its download routes), so the browser streams it to disk however
 * large it is, rather than the page holding it in memory. */
export async function download(path, filename) {
  const { ticket } = await post("/api/events/ticket");
  const link = document.createElement("a");
  link.href = `${path}${path.includes("?") ? "&" : "?"}ticket=${encodeURIComponent(ticket)}`;
  link.download = filename || "";
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
}
