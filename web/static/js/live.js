// The live feed: one EventSource on /api/events for the whole page, shared by every view.
//
// EventSource cannot send an Authorization header, so each connection first asks the box for a
// single-use stream ticket. A ticket is spent when the stream opens; after any drop the feed closes the
// old source, asks for a new ticket and reconnects with the last event id, so the box replays what was
// missed from its log. Views also hear "open" (after every (re)connect) and "resync", and refetch then:
// ephemeral news, such as a lease lapsing, is not in the log.

import { post } from "./api.js";

const KINDS = ["rack", "scan", "session", "run", "conflict", "held", "device", "presence", "box", "scanner", "resync"];
const MAX_BACKOFF_MS = 15000;

export class LiveFeed {
  constructor(onState) {
    this.listeners = new Set();
    this.onState = onState;
    this.source = null;
    this.lastId = "";
    this.backoff = 1000;
    this.timer = null;
    this.running = false;
    this.state = "idle";
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.setState("idle");
  }

  listen(callback) {
    this.listeners.add(callback);
    return () => this.listeners.delete(callback);
  }

  setState(state) {
    this.state = state;
    this.onState(state);
  }

  emit(kind, message) {
    for (const callback of [...this.listeners]) {
      try {
        callback(kind, message);
      } catch (error) {
        console.error("live listener failed", error);
      }
    }
  }

  async connect() {
    if (!this.running) return;
    let ticket;
    try {
      ticket = (await post("/api/events/ticket")).ticket;
    } catch {
      this.retry();
      return;
    }
    if (!this.running) return;
    const params = new URLSearchParams({ ticket });
    if (this.lastId) params.set("last_event_id", this.lastId);
    const source = new EventSource(`/api/events?${params}`);
    this.source = source;
    source.onopen = () => {
      this.backoff = 1000;
      this.setState("live");
      this.emit("open", null);
    };
    source.onerror = () => {
      // The ticket is spent, so the browser's own retry would be refused: start over with a new one.
      source.close();
      if (this.source === source) this.retry();
    };
    for (const kind of KINDS) {
      source.addEventListener(kind, (event) => {
        if (event.lastEventId) this.lastId = event.lastEventId;
        // Fell behind: the views refetch the current state, so replaying the backlog would be waste.
        if (kind === "resync") this.lastId = "";
        let message = null;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        this.emit(kind, message);
      });
    }
  }

  retry() {
    this.source = null;
    if (!this.running) return;
    this.setState("reconnecting");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
  }
}
