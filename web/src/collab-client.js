// collab-client: a small, framework-free client for the collab protocol
// (docs/protocol.md). It keeps one replica of a document, speaks the WebSocket
// protocol with the ot.js / ShareDB client state machine, and reconnects by
// itself. Operational transformation is done by the `ot-text-unicode` package;
// every position and length here counts Unicode code points, as in the
// protocol.
//
// State machine (ot.js): *synchronized* (nothing unacknowledged), *awaiting*
// (one op in flight), or *awaiting with buffer* (one op in flight and the
// later local edits composed into one buffered op). At most one op is in
// flight; each sent op gets the next `seq` for this `client_id`.
//
// Exactly once: the client id and the next seq are persisted per document
// (sessionStorage by default), so a reloaded tab never reuses a seq. A live
// client takes its record out of storage and writes it back only as the page
// goes away (pagehide) or the client closes: a tab copied meanwhile ("Duplicate
// tab" copies sessionStorage) finds no record and picks its own id, so two
// live tabs never share a (client_id, seq) and silently drop each other's
// edits as duplicates. After a
// reconnect the client resumes with `since` = its revision; if its op in
// flight is listed in the resume welcome, that is its ack; otherwise it is
// resent with the same seq, and the server drops it if it had committed it.
//
// Access control (token mode): the client connects with `?token=<jwt>`; the
// welcome names the connection's `role` (read | write | admin) and the token's
// `exp` (unix seconds; null when the server has no key). Before `exp` the
// client asks the page for a new token (`refreshToken`) and sends it as an
// `auth` frame; the reply carries the new role and exp. A read connection
// refuses local edits (`submitOp` throws) and sends no presence (the server
// would refuse both). An op refused with `forbidden` (the role dropped to read
// while it was in flight) drops every unsynced edit and reloads the server's
// content. `unauthorized` (bad, expired or revoked token) and a `forbidden`
// before the welcome are final: no reconnect.

import { type as textType } from 'ot-text-unicode';

export { textType };

const DEFAULT_BACKOFF = { initial: 250, max: 10000, factor: 2 };
const FATAL_CODES = new Set(['not_found', 'document_deleted', 'unauthorized']);
const ROLES = new Set(['read', 'write', 'admin']);
// Token refresh: at the later of 60 s before `exp` and 3/4 of the remaining
// lifetime (so a 1-hour token is renewed a minute before it ends, a 2-minute
// token after 90 s); a failed refresh is retried every REFRESH_RETRY_MS (or
// sooner, at a quarter of what is left) until the token expires.
const REFRESH_MARGIN_MS = 60000;
const REFRESH_FRACTION = 0.75;
const REFRESH_RETRY_MS = 5000;
const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout fires at once beyond this

/** When to refresh a token that expires at `exp` (unix s), as a delay in ms from `now`. */
export function refreshDelay(exp, now = Date.now()) {
  const left = exp * 1000 - now;
  if (left <= 0) return 0;
  return Math.max(0, Math.round(Math.max(left - REFRESH_MARGIN_MS, left * REFRESH_FRACTION)));
}

/** 'expired', 'revoked' or null, from an `unauthorized` error's message. */
export function authReason(message) {
  const m = String(message || '').toLowerCase();
  if (m.includes('revoked')) return 'revoked';
  if (m.includes('expired')) return 'expired';
  return null;
}
const CLIENT_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Number of code points in a JavaScript (UTF-16) string. */
export function codePointLength(s) {
  let n = s.length;
  for (let i = 0; i < s.length - 1; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

/** A text-unicode op turning `from` into `to` (common prefix and suffix kept). */
export function diffOp(from, to) {
  if (from === to) return [];
  const a = Array.from(from);
  const b = Array.from(to);
  let pre = 0;
  while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
  let suf = 0;
  while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
  const op = [];
  if (pre) op.push(pre);
  const del = a.length - pre - suf;
  if (del) op.push({ d: del });
  const ins = b.slice(pre, b.length - suf).join('');
  if (ins) op.push(ins);
  return textType.normalize(op);
}

function randomId() {
  const bytes = new Uint8Array(12);
  (globalThis.crypto || {}).getRandomValues
    ? globalThis.crypto.getRandomValues(bytes)
    : bytes.forEach((_, i) => (bytes[i] = Math.floor(Math.random() * 256)));
  return 'c' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The `sub` claim of a JWT, read without checking it (only to keep one user's
 * client id away from another's); null when absent or unreadable.
 */
export function tokenSubject(token) {
  if (typeof token !== 'string') return null;
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(part.padEnd(Math.ceil(part.length / 4) * 4, '='));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    return claims && typeof claims.sub === 'string' ? claims.sub : null;
  } catch {
    return null;
  }
}

function defaultStorage() {
  try {
    if (globalThis.sessionStorage) return globalThis.sessionStorage;
  } catch {
    // Storage can throw when disabled.
  }
  return null;
}

function isOp(op) {
  return Array.isArray(op);
}

/** Plain-words text for the protocol's error codes. */
export function describeError(code, fallback) {
  switch (code) {
    case 'document_deleted':
      return 'This document has been deleted.';
    case 'not_found':
      return 'This document does not exist (it may have been deleted).';
    case 'too_large':
      return 'That change is too large: the document would exceed the size limit. It was not saved.';
    case 'rate_limited':
      return 'Too many changes too quickly: the server is slowing this page down. Your edits will be retried.';
    case 'unavailable':
      return 'The server could not save a change just now. It will be retried.';
    case 'invalid_op':
      return 'The server refused a change from this page. The document was reloaded.';
    case 'rev_out_of_range':
      return 'This page fell out of step with the server. Reloading the document.';
    case 'unauthorized':
      switch (authReason(fallback)) {
        case 'revoked':
          return 'Your access to this document was revoked.';
        case 'expired':
          return 'Your access has expired.';
        default:
          return 'You are not signed in, or your access is not valid.';
      }
    case 'forbidden':
      return 'You do not have access to this document.';
    case 'read_only':
      return 'You can only read this document: your unsaved edits were discarded.';
    case 'token_refresh_failed':
      return 'Could not renew access to this document. Retrying.';
    case 'bad_message':
      return 'The server did not understand a message from this page.';
    case 'lost_edits':
      return 'Some unsynced edits could not be merged with the server copy and were dropped.';
    default:
      return fallback || 'Something went wrong talking to the server.';
  }
}

/**
 * A live replica of one document.
 *
 * Events (an EventTarget; each event's `detail` is shown):
 *  - `ready`    {content, rev}: the first full content arrived.
 *  - `remoteop` {op, rev, clientId, seq, reset}: a remote op was applied to
 *               `content`; `op` applies to the content as it was just before.
 *               `reset` is true for a diff made from a full-content resync.
 *  - `ack`      {seq, rev}: our op in flight was committed.
 *  - `presence` {clientId, selection, user}: a peer moved (or joined).
 *  - `leave`    {clientId}
 *  - `peers`    {peers: Map}: the peer list changed (any reason).
 *  - `status`   {status, pending}: `connecting` | `connected` |
 *               `reconnecting` | `offline` | `closed` | `unauthorized` |
 *               `forbidden`, and the number of unsynced local edits.
 *  - `auth`     {role, exp, previousRole}: the connection's role or the
 *               token's expiry changed (welcome, `auth` reply, or a refused op).
 *  - `token`    {token}: a refreshed token was taken (for the page's REST calls).
 *  - `error`    {code, message, text, seq, fatal, reason}: `text` is plain
 *               words; `reason` is 'expired' | 'revoked' | null for
 *               `unauthorized`.
 */
export class CollabClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.docId
   * @param {string} [options.url] base URL of the server (http(s)://host or
   *   ws(s)://host); defaults to the page's origin.
   * @param {string} [options.clientId] a fixed client id (else persisted or generated)
   * @param {Storage|null} [options.storage] where client id and next seq live
   *   (default sessionStorage; null: not persisted)
   * @param {function} [options.WebSocket] WebSocket constructor
   * @param {{initial:number,max:number,factor:number}} [options.backoff]
   * @param {number} [options.offlineAfter] failed attempts before `offline` (default 2)
   * @param {boolean} [options.autoConnect] connect now (default true)
   * @param {string} [options.token] access token (JWT), sent as `?token=`
   * @param {() => Promise<string>} [options.refreshToken] returns a new token
   *   for the same user; called before the current one expires
   */
  constructor(options) {
    super();
    if (!options || typeof options.docId !== 'string') throw new TypeError('docId is required');
    this.docId = options.docId;
    this.baseUrl = options.url || (globalThis.location ? globalThis.location.origin : 'http://127.0.0.1:8000');
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this.offlineAfter = options.offlineAfter ?? 2;
    /** The access token used for the next connection (and sent on refresh). */
    this.token = typeof options.token === 'string' && options.token ? options.token : null;
    this.refreshToken = typeof options.refreshToken === 'function' ? options.refreshToken : null;
    /** 'read' | 'write' | 'admin', from the last welcome or `auth` reply; null before. */
    this.role = null;
    /** The token's expiry (unix seconds) as the server reported it; null without one. */
    this.exp = null;

    // In token mode the server ties a client id to the user who edits under
    // it: a stored id is reused only by the same user (the token's `sub`).
    this._sub = tokenSubject(this.token);
    const claimed = this._claim();
    const saved = (claimed.sub ?? null) === this._sub ? claimed : {};
    this._fixedClientId = !!options.clientId;
    this.clientId = options.clientId || saved.clientId || randomId();
    if (!CLIENT_ID_RE.test(this.clientId)) throw new TypeError('client id must match [A-Za-z0-9_-]{1,64}');
    this.nextSeq = saved.clientId === this.clientId && saved.nextSeq > 0 ? saved.nextSeq : 1;
    this._reidentified = false;

    /** The local content (server content plus pending local edits). */
    this.content = null;
    /** The last server revision this replica has seen. */
    this.rev = null;
    /** @type {{seq:number, op:Array, edits:number}|null} */
    this.inflight = null;
    /** @type {Array|null} */
    this.buffer = null;
    this.bufferEdits = 0;
    /** client_id -> {selection, user} */
    this.peers = new Map();
    this.status = 'closed';

    this._ws = null;
    this._attempts = 0;
    this._timer = null;
    this._retryTimer = null;
    this._retryDelay = 0;
    this._paused = false;
    this._stopped = false;
    this._presence = null; // {selection, user}
    this._presenceDirty = false;
    this._reload = false;
    this._refreshTimer = null;
    this._refreshing = null; // Promise while refreshToken() runs
    this._tokenRenewed = false; // a new token since the server last told us its exp
    this._resyncWhenIdle = false; // reload once the op in flight is answered
    this._authPending = 0; // auth frames sent on this connection and not yet answered

    if (globalThis.addEventListener) {
      // Back online: try now rather than at the end of the backoff.
      this._onOnline = () => {
        if (!this._ws && !this._stopped && !this._paused) {
          clearTimeout(this._timer);
          this._open();
        }
      };
      globalThis.addEventListener('online', this._onOnline);
      if (this.storage) {
        // Hand the record back for a reload; take it again if the page comes
        // back from the back/forward cache instead.
        this._onPageHide = () => this._save();
        this._onPageShow = (e) => {
          if (e && e.persisted && !this._stopped) this._claim();
        };
        globalThis.addEventListener('pagehide', this._onPageHide);
        globalThis.addEventListener('pageshow', this._onPageShow);
      }
    }
    if (options.autoConnect !== false) this.connect();
  }

  /** Unsynced local edits (in flight or buffered). */
  get pending() {
    return (this.inflight ? this.inflight.edits : 0) + this.bufferEdits;
  }

  get connected() {
    return this.status === 'connected';
  }

  /** True while the server has given this connection the `read` role. */
  get readOnly() {
    return this.role === 'read';
  }

  // ---- public API -------------------------------------------------------

  /** Open the connection (again). */
  connect() {
    this._stopped = false;
    this._paused = false;
    if (this._ws) return;
    clearTimeout(this._timer);
    this._open();
  }

  /** Close for good: no more reconnects. Pending edits stay in memory. */
  close() {
    if (!this._stopped) this._save(); // for the next client of this tab (a reload)
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._authRetryTimer);
    if (this._onOnline) globalThis.removeEventListener('online', this._onOnline);
    if (this._onPageHide) {
      globalThis.removeEventListener('pagehide', this._onPageHide);
      globalThis.removeEventListener('pageshow', this._onPageShow);
      this._onPageHide = null;
    }
    this._drop();
    this._setStatus('closed');
  }

  /**
   * Work offline: close the socket and stop reconnecting until `goOnline()`.
   * Local edits are kept and sent, exactly once, when back online.
   */
  goOffline() {
    if (this._stopped) return;
    this._paused = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    this._drop();
    this._setStatus('offline');
  }

  goOnline() {
    if (this._stopped || !this._paused) return;
    this._paused = false;
    this._attempts = 0;
    this._open();
  }

  /**
   * Apply a local edit (a text-unicode op against `content`) and queue it.
   * Throws if the op does not apply, or if the role is `read` (the error's
   * `code` is 'read_only'); then nothing changes.
   */
  submitOp(op) {
    if (this.content === null) throw new Error('the document is not loaded yet');
    if (this.readOnly) {
      const e = new Error('read only: this connection may not edit the document');
      e.code = 'read_only';
      throw e;
    }
    const next = textType.apply(this.content, op);
    this.content = next;
    this._transformPeers(op);
    this.buffer = this.buffer ? textType.compose(this.buffer, op) : op;
    this.bufferEdits++;
    this._flush();
    this._emitStatus();
  }

  /**
   * Share our selection ([anchor, head] in code points, or null) and user
   * ({name, color}). The latest value is (re)sent whenever connected.
   */
  setPresence(selection, user) {
    this._presence = { selection: selection ? [selection[0], selection[1]] : null, user: user || (this._presence && this._presence.user) };
    this._presenceDirty = true;
    this._sendPresence();
  }

  /**
   * Use a new token (same user): sent at once as an `auth` frame when
   * connected, and used for every later connection.
   */
  setToken(token) {
    if (typeof token !== 'string' || !token) throw new TypeError('token must be a non-empty string');
    this.token = token;
    this._sub = tokenSubject(token);
    this._tokenRenewed = true;
    clearTimeout(this._refreshTimer);
    this._dispatch('token', { token });
    if (this._send({ type: 'auth', token })) this._authPending++;
  }

  // ---- access tokens --------------------------------------------------------

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.refreshToken || this.exp === null || this._stopped) return;
    const delay = refreshDelay(this.exp);
    this._refreshTimer = setTimeout(() => {
      if (refreshDelay(this.exp) > 0 && delay >= MAX_TIMER_MS) return this._scheduleRefresh();
      this._refresh();
    }, Math.min(delay, MAX_TIMER_MS));
  }

  /** Ask the page for a new token and use it; retried until the old one expires. */
  _refresh() {
    if (this._refreshing) return this._refreshing;
    if (this._stopped) return Promise.resolve(false);
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const run = async () => {
      let token = null;
      let failure = null;
      try {
        token = await this.refreshToken();
        if (typeof token !== 'string' || !token) failure = 'refreshToken() returned no token';
      } catch (e) {
        failure = String(e && e.message ? e.message : e);
      }
      this._refreshing = null;
      if (this._stopped) return false;
      if (failure) {
        this._emitError('token_refresh_failed', failure);
        const left = this.exp === null ? Infinity : this.exp * 1000 - Date.now();
        const delay = left > 0 ? Math.max(1000, Math.min(REFRESH_RETRY_MS, left / 4)) : REFRESH_RETRY_MS;
        clearTimeout(this._refreshTimer);
        this._refreshTimer = setTimeout(() => this._refresh(), delay);
        return false;
      }
      this.setToken(token);
      return true;
    };
    this._refreshing = run();
    return this._refreshing;
  }

  /** True when the token is known to expire within a few seconds and can be renewed. */
  _tokenStale() {
    return !!this.refreshToken && this.exp !== null && !this._tokenRenewed && this.exp * 1000 - Date.now() < 5000;
  }

  _setRole(role, exp) {
    const previousRole = this.role;
    const previousExp = this.exp;
    if (ROLES.has(role)) this.role = role;
    if (exp !== undefined) this.exp = typeof exp === 'number' ? exp : null;
    if (this.role !== previousRole || this.exp !== previousExp) {
      this._dispatch('auth', { role: this.role, exp: this.exp, previousRole });
    }
    if (this.readOnly && previousRole !== 'read') this._becameReadOnly();
    else if (!this.readOnly && previousRole === 'read' && this._presence) {
      this._presenceDirty = true;
      this._sendPresence();
    }
  }

  /**
   * The role dropped to read: unsent edits would be refused. Drop them and
   * reload the server's content once the op in flight (if any) is answered.
   */
  _becameReadOnly() {
    const lost = this.bufferEdits;
    if (!this.buffer && !this.inflight) return;
    this.buffer = null;
    this.bufferEdits = 0;
    if (lost) this._emitError('read_only', `${lost} unsynced edits were dropped`);
    if (this.inflight) {
      // Committed or refused, the answer comes first; a lost connection
      // reconnects without `since` anyway.
      this._resyncWhenIdle = true;
      this._reload = true;
    } else {
      this._reload = true;
      this._reconnectSoon();
    }
    this._emitStatus();
  }

  _newIdentity() {
    this.clientId = randomId();
    this.nextSeq = 1;
    if (this.inflight) {
      this.buffer = this.buffer ? textType.compose(this.inflight.op, this.buffer) : this.inflight.op;
      this.bufferEdits += this.inflight.edits;
      this.inflight = null;
    }
  }

  _stopFor(status) {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._authRetryTimer);
    this._drop();
    // No more presence or leave frames: the peers shown would go stale.
    if (this.peers.size) {
      this.peers = new Map();
      this._dispatch('peers', { peers: this.peers });
    }
    this._setStatus(status);
  }

  // ---- connection ---------------------------------------------------------

  _wsUrl() {
    const u = new URL(this.baseUrl);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    u.pathname = u.pathname.replace(/\/$/, '') + '/ws/documents/' + encodeURIComponent(this.docId);
    u.search = '';
    u.searchParams.set('client_id', this.clientId);
    if (this.rev !== null && !this._reload) u.searchParams.set('since', String(this.rev));
    if (this.token) u.searchParams.set('token', this.token);
    return u.toString();
  }

  _open(staleChecked = false) {
    if (this._stopped || this._paused || this._ws) return;
    if (!staleChecked && this._tokenStale()) {
      // The token runs out while we are disconnected (or the page slept):
      // renew it first, so the server does not refuse us for good. If that
      // fails, connect anyway and let the server decide.
      this._setStatus(this._disconnectedStatus());
      this._refresh().then(() => this._open(true));
      return;
    }
    this._setStatus(this.rev === null && this._attempts === 0 ? 'connecting' : this._disconnectedStatus());
    let ws;
    try {
      ws = new this.WebSocketImpl(this._wsUrl());
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._wsToken = this.token;
    this._authPending = 0;
    this._welcomed = false;
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      try {
        this._onMessage(msg);
      } catch (e) {
        // Out of step with the server: start again from a resume.
        this._emitError('client_error', String(e && e.message ? e.message : e));
        this._reconnectSoon();
      }
    };
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._scheduleReconnect();
    };
    ws.onerror = () => {
      // onclose follows.
    };
  }

  _drop() {
    const ws = this._ws;
    this._ws = null;
    this._welcomed = false;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        // already closed
      }
    }
  }

  _reconnectSoon() {
    this._drop();
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    clearTimeout(this._retryTimer);
    if (this._stopped || this._paused) return;
    this._attempts++;
    this._setStatus(this._disconnectedStatus());
    const { initial, max, factor } = this.backoff;
    const base = Math.min(max, initial * Math.pow(factor, Math.max(0, this._attempts - 1)));
    const delay = this._attempts === 1 ? Math.min(base, 100) : base * (0.75 + Math.random() * 0.5);
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _disconnectedStatus() {
    if (globalThis.navigator && globalThis.navigator.onLine === false) return 'offline';
    return this._attempts > this.offlineAfter ? 'offline' : 'reconnecting';
  }

  _send(msg) {
    if (!this._ws || !this._welcomed || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  // ---- messages -------------------------------------------------------------

  _onMessage(msg) {
    switch (msg.type) {
      case 'welcome':
        return this._onWelcome(msg);
      case 'ack':
        return this._onAck(msg.seq, msg.rev);
      case 'op':
        return this._onRemote(msg);
      case 'presence':
        return this._onPresence(msg);
      case 'leave':
        if (this.peers.delete(msg.client_id)) {
          this._dispatch('leave', { clientId: msg.client_id });
          this._dispatch('peers', { peers: this.peers });
        }
        return;
      case 'error':
        return this._onError(msg);
      case 'auth':
        // The reply to our `auth` frame: the new token is in force.
        if (this._authPending > 0) this._authPending--;
        this._tokenRenewed = false;
        this._setRole(msg.role, msg.exp);
        this._scheduleRefresh();
        return;
      default:
        return;
    }
  }

  _onWelcome(msg) {
    if (msg.client_id && msg.client_id !== this.clientId) {
      this.clientId = msg.client_id;
    }
    this._welcomed = true;
    this._attempts = 0;
    this._retryDelay = 0;
    const wasReload = this._reload;
    this._reload = false;
    this._resyncWhenIdle = false;
    // Role and expiry first, so `ready` listeners see them. (A server
    // without access control sends neither: the role stays null, editable.)
    if (this._wsToken === this.token) this._tokenRenewed = false;
    const previousRole = this.role;
    const previousExp = this.exp;
    if (ROLES.has(msg.role)) this.role = msg.role;
    if (msg.exp !== undefined) this.exp = typeof msg.exp === 'number' ? msg.exp : null;
    if (this.role !== previousRole || this.exp !== previousExp) {
      this._dispatch('auth', { role: this.role, exp: this.exp, previousRole });
    }

    if (Array.isArray(msg.ops)) {
      // Resume: the ops after our revision, each with its author.
      for (const entry of msg.ops) {
        if (entry.rev <= this.rev) continue;
        if (entry.rev !== this.rev + 1) throw new Error(`resume gap: have ${this.rev}, got ${entry.rev}`);
        if (this.inflight && entry.client_id === this.clientId && entry.seq === this.inflight.seq) {
          this._ackInflight(entry.rev, false);
        } else {
          this._applyRemote(entry.op, entry.rev, entry.client_id ?? null, entry.seq ?? null, false);
        }
      }
      if (typeof msg.rev === 'number' && msg.rev !== this.rev) {
        throw new Error(`resume ended at ${this.rev}, server is at ${msg.rev}`);
      }
    } else {
      const content = typeof msg.content === 'string' ? msg.content : '';
      if (this.content === null) {
        this.content = content;
        this.rev = msg.rev;
        this._dispatch('ready', { content, rev: msg.rev });
      } else {
        if (this.pending > 0 || wasReload) {
          // The server could not resume us (or we asked for a reload after a
          // refused edit): unsynced edits can no longer be rebased safely.
          const lost = this.pending;
          this.inflight = null;
          this.buffer = null;
          this.bufferEdits = 0;
          if (lost > 0 && !wasReload) this._emitError('lost_edits', `${lost} unsynced edits were dropped`);
        }
        const op = diffOp(this.content, content);
        this.content = content;
        this.rev = msg.rev;
        if (op.length) {
          this._transformPeersRemote(op);
          this._dispatch('remoteop', { op, rev: msg.rev, clientId: null, seq: null, reset: true });
        }
      }
    }

    this.peers = new Map();
    for (const p of msg.peers || []) {
      if (p.client_id === this.clientId) continue;
      this.peers.set(p.client_id, { selection: this._peerSelection(p.selection), user: p.user || null });
    }
    this._dispatch('peers', { peers: this.peers });

    this._setStatus('connected');
    this._scheduleRefresh();
    if (this._wsToken !== this.token && this.token) {
      // Renewed while this connection was being set up.
      if (this._send({ type: 'auth', token: this.token })) this._authPending++;
    }
    if (this.readOnly && this.pending > 0) {
      // Read only now, with edits the server would refuse: drop them and
      // take the server's content.
      const lost = this.pending;
      this.inflight = null;
      this.buffer = null;
      this.bufferEdits = 0;
      this._emitError('read_only', `${lost} unsynced edits were dropped`);
      this._reload = true;
      this._reconnectSoon();
      return;
    }
    // Resend what is still unacknowledged, with the same seq, or send the buffer.
    if (this.inflight) {
      this._send({ type: 'op', rev: this.rev, seq: this.inflight.seq, op: this.inflight.op });
    } else {
      this._flush();
    }
    if (this._presence) this._presenceDirty = true;
    this._sendPresence();
    this._emitStatus();
  }

  _onAck(seq, rev) {
    if (!this.inflight || seq !== this.inflight.seq) return; // a duplicate ack of a resend
    this._ackInflight(rev, true);
  }

  _ackInflight(rev, flush) {
    const seq = this.inflight.seq;
    this.inflight = null;
    this.rev = rev;
    this._dispatch('ack', { seq, rev });
    if (this._resyncWhenIdle) {
      // Edits made after this one were dropped (read only): reload.
      this._resyncWhenIdle = false;
      this._reload = true;
      this._reconnectSoon();
      this._emitStatus();
      return;
    }
    if (flush) this._flush();
    this._sendPresence();
    this._emitStatus();
  }

  _onRemote(msg) {
    if (typeof msg.rev !== 'number' || !isOp(msg.op)) return;
    if (msg.rev <= this.rev) return; // already have it
    if (msg.rev !== this.rev + 1) throw new Error(`missing ops: have ${this.rev}, got ${msg.rev}`);
    if (this.inflight && msg.client_id === this.clientId && msg.seq === this.inflight.seq) {
      // Our own op, committed from an earlier connection: it is the ack.
      this._ackInflight(msg.rev, true);
      return;
    }
    this._applyRemote(msg.op, msg.rev, msg.client_id ?? null, msg.seq ?? null, true);
  }

  _applyRemote(op, rev, clientId, seq, live) {
    // ot.js: our pending ops go left of the server's, the server's op is
    // transformed to apply after ours.
    if (this.inflight) {
      const mine = this.inflight.op;
      this.inflight.op = textType.transform(mine, op, 'left');
      op = textType.transform(op, mine, 'right');
    }
    if (this.buffer) {
      const mine = this.buffer;
      this.buffer = textType.transform(mine, op, 'left');
      op = textType.transform(op, mine, 'right');
    }
    this.content = textType.apply(this.content, op);
    this.rev = rev;
    this._transformPeersRemote(op);
    this._dispatch('remoteop', { op, rev, clientId, seq, reset: false, live });
  }

  _onPresence(msg) {
    if (!msg.client_id || msg.client_id === this.clientId) return;
    const prev = this.peers.get(msg.client_id);
    const entry = { selection: this._peerSelection(msg.selection), user: msg.user || (prev && prev.user) || null };
    this.peers.set(msg.client_id, entry);
    this._dispatch('presence', { clientId: msg.client_id, selection: entry.selection, user: entry.user });
    this._dispatch('peers', { peers: this.peers });
  }

  _onError(msg) {
    const code = msg.code || 'error';
    const ours = this.inflight && msg.seq != null && msg.seq === this.inflight.seq;
    // A `forbidden` without seq while a refresh is unanswered refuses that
    // token (it does not grant this document): final, like one before the
    // welcome. The server closes the connection.
    const refusedRefresh = code === 'forbidden' && msg.seq == null && this._authPending > 0;
    if (code === 'forbidden' && this._welcomed && !refusedRefresh) {
      // The connection is read only now (a refreshed token with less access):
      // an op or a presence was refused. The connection stays open.
      if (ours) {
        const lost = this.pending;
        this.inflight = null;
        this.buffer = null;
        this.bufferEdits = 0;
        this._resyncWhenIdle = false;
        this._emitError(code, msg.message, msg.seq, false, describeError('read_only'));
        this._setRole('read');
        // Take the server's content: the refused edits are in ours.
        if (lost > 0) {
          this._reload = true;
          this._reconnectSoon();
        }
        this._emitStatus();
      } else if (msg.seq == null) {
        this._presenceDirty = false;
        this._setRole('read');
      }
      return;
    }
    if (code === 'rate_limited' && msg.seq == null && this._authPending > 0) {
      // Too many `auth` frames at once (the server takes two a second): the
      // token was not applied; send the newest again shortly.
      this._authPending--;
      clearTimeout(this._authRetryTimer);
      this._authRetryTimer = setTimeout(() => {
        if (this.token && this._send({ type: 'auth', token: this.token })) this._authPending++;
      }, 1000);
      return;
    }
    if (
      code === 'forbidden' &&
      !this._welcomed &&
      !this._fixedClientId &&
      !this._reidentified &&
      /client_id|another user/i.test(msg.message || '')
    ) {
      // Our client id belongs to another user (this tab was theirs): take a
      // fresh one, once. None of our edits were committed under that id, so
      // the unsynced ones go out again under the new id.
      this._reidentified = true;
      this._newIdentity();
      this._reconnectSoon();
      return;
    }
    const fatal = FATAL_CODES.has(code) || code === 'forbidden';
    this._emitError(code, msg.message, msg.seq, fatal);
    if (fatal) {
      this._stopFor(code === 'unauthorized' || code === 'forbidden' ? code : 'closed');
      return;
    }
    if (!ours) return;
    if (code === 'rate_limited' || code === 'unavailable') {
      // Not applied (too fast, or the server could not store it right now):
      // send the same op (same seq) again a little later.
      this._retryDelay = Math.min(5000, this._retryDelay ? this._retryDelay * 2 : 250);
      clearTimeout(this._retryTimer);
      this._retryTimer = setTimeout(() => {
        if (this.inflight) this._send({ type: 'op', rev: this.rev, seq: this.inflight.seq, op: this.inflight.op });
      }, this._retryDelay);
    } else if (code === 'rev_out_of_range') {
      this._reconnectSoon();
    } else {
      // Refused for good (invalid_op, too_large, ...): drop the local edits
      // and take the server's content.
      this.inflight = null;
      this.buffer = null;
      this.bufferEdits = 0;
      this._reload = true;
      this._reconnectSoon();
    }
  }

  // ---- sending ----------------------------------------------------------------

  _flush() {
    if (this.inflight || !this.buffer || !this._welcomed || !this._ws || this.readOnly) return;
    const op = this.buffer;
    const seq = this.nextSeq++;
    this.inflight = { seq, op, edits: this.bufferEdits };
    this.buffer = null;
    this.bufferEdits = 0;
    this._send({ type: 'op', rev: this.rev, seq, op });
  }

  _sendPresence() {
    if (!this._presenceDirty || !this._presence) return;
    // The server refuses presence from a read-only connection.
    if (this.readOnly) return;
    // A selection refers to the local content; the server knows the
    // content up to our op in flight, so wait until the buffer is sent.
    if (this.buffer) return;
    const msg = { type: 'presence', selection: this._presence.selection };
    if (this._presence.user) msg.user = this._presence.user;
    if (this._send(msg)) this._presenceDirty = false;
  }

  // ---- peers ---------------------------------------------------------------------

  /** A peer's selection arrives relative to the server content; map it onto ours. */
  _peerSelection(sel) {
    if (!Array.isArray(sel) || sel.length !== 2) return null;
    let s = [sel[0], sel[1]];
    if (this.inflight) s = textType.transformSelection(s, this.inflight.op);
    if (this.buffer) s = textType.transformSelection(s, this.buffer);
    return s;
  }

  _transformPeers(op) {
    for (const p of this.peers.values()) {
      if (p.selection) p.selection = textType.transformSelection(p.selection, op);
    }
  }

  _transformPeersRemote(op) {
    this._transformPeers(op);
  }

  // ---- persistence and events ------------------------------------------------

  _key() {
    return 'collab:' + this.docId;
  }

  /** Takes this document's record out of storage (see the top of the file). */
  _claim() {
    if (!this.storage) return {};
    try {
      const raw = this.storage.getItem(this._key());
      this.storage.removeItem(this._key());
      return raw ? JSON.parse(raw) : {};
    } catch {
      return {};
    }
  }

  _save() {
    if (!this.storage) return;
    try {
      const record = { clientId: this.clientId, nextSeq: this.nextSeq };
      if (this._sub !== null) record.sub = this._sub;
      this.storage.setItem(this._key(), JSON.stringify(record));
    } catch {
      // quota or disabled storage: keep going in memory
    }
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emitStatus();
  }

  _emitStatus() {
    this._dispatch('status', { status: this.status, pending: this.pending });
  }

  _emitError(code, message, seq, fatal = false, text = null) {
    this._dispatch('error', {
      code,
      message: message || '',
      text: text || describeError(code, message),
      seq: seq ?? null,
      fatal,
      reason: code === 'unauthorized' ? authReason(message) : null,
    });
  }

  _dispatch(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
