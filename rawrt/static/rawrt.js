// rawrt.js: the browser client of rawrt. One ES module, no dependencies, no build step.
//
//   import { Rawrt } from "/rawrt.js";
//   const rt = new Rawrt(location.origin, { transports: ["websocket", "sse", "poll"] });
//   rt.on("state", (state, info) => console.log(state, info.transport));
//   const sub = rt.subscribe("news", { since, onMessage(data, meta) {}, onReset(meta) {} });
//   const id = await rt.publish("news", { any: "json" });
//   sub.unsubscribe(); rt.close();
//
// Theory of operation
// -------------------
// The client holds one *link* at a time: a WebSocket carrying every channel, or one
// EventSource per channel, or one long-poll loop per channel. A link is *proven* once it has
// delivered something (a pong, a `connected` event, a first poll answer). Connecting tries the
// transports in order, starting with the one that last worked: a link that is not proven
// within `openTimeoutMs`, or that fails before it is proven, is skipped for the next one at
// once. When every transport has failed, or a proven link drops, the client waits a full-
// jitter backoff (`delay = min(max, min + random() * min(max, min * 2 ** attempt))`) and
// tries again, forever; the attempt count starts over once a link has stayed up `stableMs`.
// After falling back from WebSocket it probes a WebSocket every `upgradeMs` and moves back to
// it as soon as one answers.
//
// Exactly once: the client keeps the last id seen on each channel and resumes every new link
// from it (`since` on a WebSocket subscribe and on a poll, `lastEventId` on a new
// EventSource). Ids are `<epoch>-<seq>`: within an epoch a message whose seq is not above the
// last one is a duplicate and is dropped, so the application sees each message once, in
// order, across reconnects and switches. Only one link delivers at any time: a switch stops
// the old link before the new one subscribes, and the server's history fills the gap. When the
// server cannot resume a position it says so (a reset) and `onReset` runs before the next
// message; a message of an unknown epoch without one is reported through `onReset` too, so a
// lost position is never silent.
//
// Tokens: `token` (a string) or `getToken` (an async function returning one). A WebSocket
// sends it in an auth frame first (browsers cannot set headers on it), EventSource and poll
// URLs carry it as the `token` parameter, and an HTTP publish sends `Authorization: Bearer`. With
// neither, a `rawrt_token` cookie does (set `withCredentials` when rawrt is another origin). A 401, a
// close with 4401, or a stream failing when the token is about to run out asks `getToken`
// for a fresh one before the next attempt.
//
// Publishing: over the WebSocket while one is proven (the publish frame carries a `ref`, and
// the server answers `published` with the id), otherwise over HTTP (`POST /api/publish`).
// A publish whose socket drops before its answer is rejected with `error.unknown` set: it may
// or may not have been published, so it is not sent again behind the application's back.

const DEFAULTS = {
  transports: ["websocket", "sse", "poll"],
  token: null,
  getToken: null,
  withCredentials: false, // send cookies (the rawrt_token cookie) to another origin too
  openTimeoutMs: 5000, // a link not proven within this is skipped for the next transport
  backoffMinMs: 500,
  backoffMaxMs: 20000,
  stableMs: 10000, // a link up this long resets the backoff
  upgradeMs: 30000, // after a fallback, probe a WebSocket this often
  pollTimeoutS: 25, // below proxies' 60 s read timeouts
  pingTimeoutMs: 5000, // a check (page visible again) waits this long for a pong
  refreshBeforeMs: 10000, // ask getToken this long before the token's `exp`
  publishTimeoutMs: 10000, // a publish over the WebSocket not answered by then is rejected
};

const STATES = ["connecting", "connected", "disconnected", "closed"];

// --- ids ----------------------------------------------------------------------------------

/** [epoch, seq] of an id, seq as a digit string (it may exceed 2**53); null if not an id. */
export function parseId(id) {
  if (typeof id !== "string") return null;
  const dash = id.lastIndexOf("-");
  const seq = id.slice(dash + 1);
  if (dash <= 0 || !/^[0-9]+$/.test(seq)) return null;
  return [id.slice(0, dash), seq.replace(/^0+(?=.)/, "")];
}

/** True when the seq digit string `a` is above `b` (compared as numbers of any size). */
export function seqAfter(a, b) {
  return a.length !== b.length ? a.length > b.length : a > b;
}

// --- the client ---------------------------------------------------------------------------

export class Rawrt {
  constructor(url, options = {}) {
    this.url = String(url || location.origin).replace(/\/+$/, "");
    this.options = { ...DEFAULTS, ...options };
    for (const name of this.options.transports) {
      if (!TRANSPORTS[name]) throw new Error(`rawrt: unknown transport ${name}`);
    }
    this._token = this.options.token;
    this._channels = new Map(); // name -> { name, lastId, subs: Set }
    this._listeners = new Map(); // event -> Set of functions
    this._state = "disconnected";
    this._link = null; // the link in use (connecting or proven)
    this._working = null; // the transport that last worked
    this._round = []; // transports still to try in this round
    this._attempt = 0;
    this._timers = {};
    this._probe = null;
    this._closed = false;
    this._onWindow = (event) => this._windowEvent(event);
    if (typeof window !== "undefined") {
      for (const name of ["online", "offline"]) window.addEventListener(name, this._onWindow);
      document.addEventListener("visibilitychange", this._onWindow);
    }
    this._scheduleTokenRefresh();
    queueMicrotask(() => this._connect()); // listeners added right after `new` hear it all
  }

  /** The transport in use now ("websocket", "sse", "poll"), or null. */
  get transport() {
    return this._link && this._link.proven ? this._link.name : null;
  }

  get state() {
    return this._state;
  }

  /** Listen to "state" (state, info), "message" (channel, data, meta), "reset" (meta),
   * "error" (error), and with a server's --presence-events "join" and "leave" (event:
   * { channel, user, transport }, at most once, never over long polls); returns a function
   * that removes the listener. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event).delete(listener);
  }

  subscribe(channel, { since = null, onMessage = null, onReset = null } = {}) {
    if (typeof channel !== "string" || !channel) throw new Error("rawrt: a channel name");
    const sub = { onMessage, onReset };
    let chan = this._channels.get(channel);
    if (!chan) {
      chan = { name: channel, lastId: since, subs: new Set() };
      this._channels.set(channel, chan);
      chan.subs.add(sub);
      if (this._link) this._link.add(chan);
    } else {
      chan.subs.add(sub); // joins the channel where it is: its position is shared
    }
    return {
      channel,
      get lastId() {
        return chan.lastId;
      },
      unsubscribe: () => this._unsubscribe(chan, sub),
    };
  }

  /** Publish `data` (any JSON) to `channel`; resolves to the message's id. */
  async publish(channel, data) {
    const link = this._link;
    if (link && link.proven && link.publish) return link.publish(channel, data);
    const body = JSON.stringify(data === undefined ? null : data);
    for (let refreshed = false; ; refreshed = true) {
      const headers = { "Content-Type": "application/json" };
      if (this._token) headers.Authorization = `Bearer ${this._token}`;
      const answer = await fetch(`${this.url}/api/publish/${encodeURIComponent(channel)}`, {
        method: "POST",
        headers,
        body,
        credentials: this._credentials(),
      });
      if (answer.status === 401 && !refreshed && this.options.getToken) {
        await this._refreshToken();
        continue;
      }
      const reply = await answer.json().catch(() => ({}));
      if (!answer.ok) {
        const error = new Error(reply.error || `publish failed with ${answer.status}`);
        error.status = answer.status;
        throw error;
      }
      return reply.id;
    }
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    if (typeof window !== "undefined") {
      for (const name of ["online", "offline"]) window.removeEventListener(name, this._onWindow);
      document.removeEventListener("visibilitychange", this._onWindow);
    }
    for (const name of Object.keys(this._timers)) this._clear(name);
    this._stopProbe();
    this._dropLink();
    this._setState("closed");
  }

  // --- connecting ---------------------------------------------------------------------------

  _connect() {
    if (this._closed || this._link) return;
    const order = this.options.transports;
    const first = order.includes(this._working) ? this._working : order[0];
    this._round = [first, ...order.filter((name) => name !== first)];
    this._refused = new Set(); // transports whose token was refused in this round
    this._setState("connecting");
    this._tryNext();
  }

  _tryNext() {
    if (this._closed || this._link) return; // closed, or another attempt got there first
    const name = this._round.shift();
    if (name === undefined) {
      this._scheduleReconnect();
      return;
    }
    const link = new TRANSPORTS[name](this, name);
    this._link = link;
    this._timer("open", this.options.openTimeoutMs, () => this._failed(link, {}));
    link.start();
  }

  /** A link delivered its first frame or event: it works. */
  _proven(link) {
    if (link !== this._link || link.proven) return;
    link.proven = true;
    this._clear("open");
    this._working = link.name;
    this._setState("connected", { transport: link.name });
    this._timer("stable", this.options.stableMs, () => (this._attempt = 0));
    if (link.name !== this.options.transports[0] && this.options.transports[0] === "websocket") {
      this._timer("upgrade", this.options.upgradeMs, () => this._startProbe());
    }
  }

  /** A link failed or closed; `why.auth` when the server refused its token. */
  _failed(link, why) {
    if (link !== this._link) return;
    const proven = link.proven;
    this._dropLink();
    if (why.auth && !proven && this.options.getToken && !this._refused.has(link.name)) {
      this._refused.add(link.name); // refused for its token, not for the transport: again
      this._round.unshift(link.name);
    }
    if (why.auth || this._tokenRunningOut()) {
      this._withFreshToken(() => (proven ? this._scheduleReconnect() : this._tryNext()));
    } else if (proven) {
      this._scheduleReconnect();
    } else {
      this._tryNext();
    }
  }

  _dropLink() {
    const link = this._link;
    this._link = null;
    this._clear("open");
    this._clear("stable");
    this._clear("upgrade");
    if (link) link.stop();
  }

  _scheduleReconnect() {
    if (this._closed) return;
    this._dropLink();
    const { backoffMinMs: min, backoffMaxMs: max } = this.options;
    const delay = Math.min(max, min + Math.random() * Math.min(max, min * 2 ** this._attempt));
    this._attempt = Math.min(this._attempt + 1, 30);
    this._setState("disconnected", { transport: null, retryInMs: Math.round(delay) });
    this._timer("reconnect", delay, () => this._connect());
  }

  _reconnectNow() {
    if (this._closed || this._link) return;
    this._clear("reconnect");
    this._connect();
  }

  _windowEvent(event) {
    if (this._closed) return;
    if (event.type === "online") {
      this._attempt = 0;
      this._reconnectNow();
    } else if (event.type === "offline") {
      if (this._link) this._failed(this._link, {});
    } else if (document.visibilityState === "visible") {
      if (this._link && this._link.proven) this._link.check();
      else this._reconnectNow();
    }
  }

  // --- back to WebSocket --------------------------------------------------------------------

  _startProbe() {
    if (this._closed || this._probe || !this._link) return;
    const probe = new WebSocketLink(this, "websocket");
    probe.probing = true;
    this._probe = probe;
    this._timer("probe", this.options.openTimeoutMs, () => this._probeFailed(probe));
    probe.start();
  }

  _probeAnswered(probe) {
    if (probe !== this._probe) return;
    this._clear("probe");
    this._probe = null;
    // Stop the fallback before the WebSocket subscribes: one link delivers at a time, and
    // each channel resumes from its last id, so the switch loses and repeats nothing.
    this._dropLink();
    probe.probing = false;
    this._link = probe;
    this._proven(probe);
    for (const chan of this._channels.values()) probe.add(chan);
  }

  _probeFailed(probe) {
    if (probe !== this._probe) return;
    this._stopProbe();
    if (this._link && this._link.proven) {
      this._timer("upgrade", this.options.upgradeMs, () => this._startProbe());
    }
  }

  _stopProbe() {
    this._clear("probe");
    if (this._probe) this._probe.stop();
    this._probe = null;
  }

  // --- what links report --------------------------------------------------------------------

  _message(link, channel, data, meta) {
    const chan = this._channels.get(channel);
    if (link !== this._link || !chan) return;
    const id = parseId(meta.id);
    const last = parseId(chan.lastId);
    if (id && last) {
      if (id[0] !== last[0]) {
        this._reset(link, channel, null, "epoch"); // never silent, even if unannounced
      } else if (!seqAfter(id[1], last[1])) {
        return; // seen already (a replay overlapping what was delivered)
      }
    }
    if (id) chan.lastId = meta.id;
    for (const sub of [...chan.subs]) this._call(sub.onMessage, data, meta);
    this._emit("message", channel, data, meta);
  }

  _reset(link, channel, id, reason = "position lost") {
    const chan = this._channels.get(channel);
    if (link !== this._link || !chan) return;
    chan.lastId = id;
    const meta = { channel, id, reason };
    for (const sub of [...chan.subs]) this._call(sub.onReset, meta);
    this._emit("reset", meta);
  }

  /** A join or leave of another subscriber: not a message (no id), so no position moves. */
  _presence(link, frame) {
    if (link !== this._link || !this._channels.has(frame.channel)) return;
    const { type, channel, user, transport } = frame;
    this._emit(type, { channel, user, transport });
  }

  /** The server named a channel's position (a fresh subscribe): keep it if we had none. */
  _position(link, channel, id) {
    const chan = this._channels.get(channel);
    if (link === this._link && chan && chan.lastId == null && parseId(id)) chan.lastId = id;
  }

  _unsubscribe(chan, sub) {
    chan.subs.delete(sub);
    if (chan.subs.size || this._channels.get(chan.name) !== chan) return;
    this._channels.delete(chan.name);
    if (this._link) this._link.remove(chan);
  }

  // --- tokens -------------------------------------------------------------------------------

  async _currentToken() {
    if (!this._token && this.options.getToken) await this._refreshToken();
    return this._token;
  }

  async _refreshToken() {
    if (!this._refreshing) {
      this._refreshing = (async () => {
        try {
          this._token = await this.options.getToken();
          this._scheduleTokenRefresh();
        } catch (error) {
          this._emit("error", error);
        } finally {
          this._refreshing = null;
        }
      })();
    }
    return this._refreshing;
  }

  _withFreshToken(then) {
    if (!this.options.getToken) return then();
    this._refreshToken().then(() => {
      if (!this._closed && !this._link) then();
    });
  }

  /** A token's `exp` in ms, if it is a JWT; the client only reads it to refresh in time. */
  _tokenExpiresAt() {
    try {
      const part = this._token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const exp = JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).exp;
      return typeof exp === "number" ? exp * 1000 : null;
    } catch {
      return null;
    }
  }

  _tokenRunningOut() {
    const at = this._token && this.options.getToken ? this._tokenExpiresAt() : null;
    return at !== null && at - Date.now() < this.options.refreshBeforeMs;
  }

  _scheduleTokenRefresh() {
    const at = this._token && this.options.getToken ? this._tokenExpiresAt() : null;
    if (at === null || this._closed) return;
    const wait = Math.max(1000, at - Date.now() - this.options.refreshBeforeMs);
    this._timer("token", Math.min(wait, 2 ** 31 - 1), async () => {
      await this._refreshToken();
      if (this._link && this._link.proven) this._link.tokenChanged();
    });
  }

  // --- plumbing -----------------------------------------------------------------------------

  _setState(state, info = {}) {
    if (this._state === state && state !== "connected") return;
    this._state = state;
    this._emit("state", state, { transport: null, ...info });
  }

  _emit(event, ...args) {
    for (const listener of [...(this._listeners.get(event) || [])]) this._call(listener, ...args);
  }

  _call(fn, ...args) {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (error) {
      queueMicrotask(() => {
        throw error; // the application's bug: reported, and delivery goes on
      });
    }
  }

  _timer(name, ms, fn) {
    this._clear(name);
    this._timers[name] = setTimeout(() => {
      delete this._timers[name];
      fn();
    }, ms);
  }

  _clear(name) {
    clearTimeout(this._timers[name]);
    delete this._timers[name];
  }

  _credentials() {
    return this.options.withCredentials ? "include" : "same-origin";
  }

  _endpoint(path, params) {
    const query = Object.entries(params)
      .filter(([, value]) => value != null && value !== "")
      .map(([key, value]) => `${key}=${encodeURIComponent(value)}`)
      .join("&");
    return `${this.url}${path}${query ? "?" + query : ""}`;
  }
}

// --- links: one per transport -----------------------------------------------------------------
// Each has start(), add(chan), remove(chan), stop(), check() and tokenChanged(); it
// reports to the client through _proven, _failed, _message, _reset and _position.

// Server frames that show a WebSocket link works.
const PROOF = new Set(["pong", "subscribed", "message", "reset", "authenticated", "unsubscribed"]);

class WebSocketLink {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.proven = false;
    this.probing = false;
    this.ws = null;
    this.stopped = false;
    this.pending = new Map(); // ref -> { resolve, reject, timer } of publishes sent
    this.nextRef = 1;
  }

  /** Publish over this socket; the server answers the frame's `ref` with the id. */
  publish(channel, data) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(Object.assign(new Error("rawrt: not connected"), { unknown: false }));
    }
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(Object.assign(new Error("rawrt: publish not answered"), { unknown: true }));
      }, this.client.options.publishTimeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
      this.send({ type: "publish", channel, data: data === undefined ? null : data, ref });
    });
  }

  /** The answer (`published`, or an error frame) to the publish that carried `ref`. */
  answered(ref, error, id) {
    const waiting = this.pending.get(ref);
    if (!waiting) return;
    this.pending.delete(ref);
    clearTimeout(waiting.timer);
    if (error) waiting.reject(error);
    else waiting.resolve(id);
  }

  async start() {
    const client = this.client;
    const token = await client._currentToken();
    if (this.stopped) return;
    const url = client.url.replace(/^http/, "ws") + "/ws";
    const ws = (this.ws = new WebSocket(url));
    ws.onopen = () => {
      if (token) this.send({ type: "auth", token });
      this.send({ type: "ping" }); // its pong proves the link, even with no channel
      if (!this.probing) for (const chan of client._channels.values()) this.add(chan);
    };
    ws.onmessage = (event) => this.received(event.data);
    ws.onclose = (event) => this.closed(event);
  }

  received(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const client = this.client;
    if (this.probing) {
      if (frame.type === "pong") client._probeAnswered(this);
      return;
    }
    this.alive = true;
    if (PROOF.has(frame.type)) client._proven(this); // an error frame proves nothing
    switch (frame.type) {
      case "message":
        client._message(this, frame.channel, frame.data, {
          id: frame.id,
          channel: frame.channel,
          timestamp: frame.timestamp,
        });
        break;
      case "subscribed":
        client._position(this, frame.channel, frame.id);
        break;
      case "reset":
        client._reset(this, frame.channel, frame.id);
        break;
      case "join":
      case "leave":
        client._presence(this, frame);
        break;
      case "published":
        this.answered(frame.ref, null, frame.id);
        break;
      case "error": {
        const error = Object.assign(new Error(frame.reason || frame.data), frame);
        if (frame.ref !== undefined) {
          const statuses = { Unauthorized: 401, Forbidden: 403, "Rate limited": 429 };
          error.status = statuses[frame.data] || 503; // "Server busy", "Publish failed"
          this.answered(frame.ref, error);
        } else {
          client._emit("error", error);
        }
        break;
      }
    }
  }

  closed(event) {
    if (this.stopped) return;
    this.stopped = true;
    const why = { auth: event.code === 4401, code: event.code };
    if (this.probing) this.client._probeFailed(this);
    else this.client._failed(this, why);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  add(chan) {
    const frame = { type: "subscribe", channel: chan.name };
    if (chan.lastId) frame.since = chan.lastId;
    this.send(frame);
  }

  remove(chan) {
    this.send({ type: "unsubscribe", channel: chan.name });
  }

  /** Is the socket still alive? Any frame within pingTimeoutMs says so. */
  check() {
    this.alive = false;
    this.send({ type: "ping" });
    this.client._timer("check", this.client.options.pingTimeoutMs, () => {
      if (!this.alive && !this.stopped && this.ws) this.ws.close(4000, "no pong");
      if (!this.alive && !this.stopped) this.closed({ code: 1006 });
    });
  }

  tokenChanged() {
    if (this.client._token) this.send({ type: "auth", token: this.client._token });
  }

  stop() {
    this.stopped = true;
    for (const ref of [...this.pending.keys()]) {
      const error = new Error("rawrt: the connection closed before the publish was answered");
      this.answered(ref, Object.assign(error, { unknown: true }));
    }
    if (this.ws) {
      this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    }
  }
}

class EventSourceLink {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.proven = false;
    this.streams = new Map(); // channel name -> EventSource
    this.stopped = false;
  }

  async start() {
    await this.client._currentToken();
    if (this.stopped) return;
    this.started = true;
    if (!this.client._channels.size) this.client._proven(this); // nothing to open: idle
    for (const chan of this.client._channels.values()) this.add(chan);
  }

  add(chan) {
    const client = this.client;
    if (!this.started || this.stopped) return; // start() opens every channel there is
    const path = `/api/sse/subscribe/${encodeURIComponent(chan.name)}`;
    const source = new EventSource(
      client._endpoint(path, { lastEventId: chan.lastId, token: client._token }),
      { withCredentials: client.options.withCredentials }
    );
    let opened = false;
    source.onmessage = (event) => {
      if (!opened) {
        opened = true; // the stream's first event is its `connected` marker
        client._proven(this);
        client._position(this, chan.name, event.lastEventId);
        return;
      }
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      client._message(this, chan.name, data, { id: event.lastEventId, channel: chan.name });
    };
    source.addEventListener("reset", (event) => {
      client._reset(this, chan.name, event.lastEventId);
    });
    for (const kind of ["join", "leave"]) {
      source.addEventListener(kind, (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (frame.type === kind && frame.channel === chan.name) client._presence(this, frame);
      });
    }
    // EventSource would retry on its own, without our backoff or a fresh lastEventId: the
    // client decides instead.
    source.onerror = () => {
      if (this.stopped) return;
      this.stop();
      client._failed(this, {});
    };
    this.streams.set(chan.name, source);
  }

  remove(chan) {
    const source = this.streams.get(chan.name);
    if (source) source.close();
    this.streams.delete(chan.name);
  }

  check() {} // a stream that died shows as an error event

  tokenChanged() {} // a stream keeps its token until the server ends it

  stop() {
    this.stopped = true;
    for (const source of this.streams.values()) source.close();
    this.streams.clear();
  }
}

class PollLink {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.proven = false;
    this.loops = new Map(); // channel name -> AbortController
    this.stopped = false;
  }

  async start() {
    await this.client._currentToken();
    if (this.stopped) return;
    this.started = true;
    if (!this.client._channels.size) this.client._proven(this);
    for (const chan of this.client._channels.values()) this.add(chan);
  }

  add(chan) {
    if (!this.started || this.stopped) return; // start() polls every channel there is
    const control = new AbortController();
    this.loops.set(chan.name, control);
    this.loop(chan, control.signal);
  }

  async loop(chan, signal) {
    const client = this.client;
    const path = `/api/poll/${encodeURIComponent(chan.name)}`;
    let timeout = 0; // the first poll answers at once: it proves the link
    while (!signal.aborted) {
      let answer, body;
      const params = { since: chan.lastId, timeout, token: client._token };
      const limit = setTimeout(() => this.fail({}), (timeout + 10) * 1000); // a hung poll
      try {
        answer = await fetch(client._endpoint(path, params), {
          signal,
          cache: "no-store",
          credentials: client._credentials(),
        });
        body = answer.ok ? await answer.json() : null;
      } catch {
        if (!signal.aborted) this.fail({});
        return;
      } finally {
        clearTimeout(limit);
      }
      if (signal.aborted) return;
      if (!body) {
        this.fail({ auth: answer.status === 401, status: answer.status });
        return;
      }
      client._proven(this);
      this.deliver(chan, body);
      timeout = client.options.pollTimeoutS;
    }
  }

  deliver(chan, body) {
    const client = this.client;
    if (body.reset) client._reset(this, chan.name, body.cursor);
    const messages = body.messages || [];
    const ids = body.ids || [];
    messages.forEach((data, i) => {
      const id = ids[i] ?? (i === messages.length - 1 ? body.cursor : undefined);
      client._message(this, chan.name, data, { id, channel: chan.name });
    });
    client._position(this, chan.name, body.cursor);
  }

  fail(why) {
    if (this.stopped) return;
    this.stop();
    this.client._failed(this, why);
  }

  remove(chan) {
    const control = this.loops.get(chan.name);
    if (control) control.abort();
    this.loops.delete(chan.name);
  }

  check() {}

  tokenChanged() {}

  stop() {
    this.stopped = true;
    for (const control of this.loops.values()) control.abort();
    this.loops.clear();
  }
}

const TRANSPORTS = { websocket: WebSocketLink, sse: EventSourceLink, poll: PollLink };

export { STATES };
