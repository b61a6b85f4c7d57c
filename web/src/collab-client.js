// collab-client: a small, framework-free client for the collab wire contract
// (version 1). It keeps one replica of a document, speaks the WebSocket
// protocol with the ot.js / ShareDB client state machine, and reconnects by
// itself. Operational transformation is done by the `ot-text-unicode` package;
// every position and length here counts Unicode code points, as in the
// contract.
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

import { type as textType } from 'ot-text-unicode';

export { textType };

const DEFAULT_BACKOFF = { initial: 250, max: 10000, factor: 2 };
const FATAL_CODES = new Set(['not_found', 'document_deleted', 'unauthorized']);
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

/** Plain-words text for the contract's error codes. */
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
      return 'You are not allowed to open this document.';
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
 *               `reconnecting` | `offline` | `closed`, and the number of
 *               unsynced local edits.
 *  - `error`    {code, message, text, seq, fatal}: `text` is plain words.
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

    const saved = this._claim();
    this.clientId = options.clientId || saved.clientId || randomId();
    if (!CLIENT_ID_RE.test(this.clientId)) throw new TypeError('client id must match [A-Za-z0-9_-]{1,64}');
    this.nextSeq = saved.clientId === this.clientId && saved.nextSeq > 0 ? saved.nextSeq : 1;

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
   * Throws if the op does not apply; then nothing changes.
   */
  submitOp(op) {
    if (this.content === null) throw new Error('the document is not loaded yet');
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

  // ---- connection ---------------------------------------------------------

  _wsUrl() {
    const u = new URL(this.baseUrl);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    u.pathname = u.pathname.replace(/\/$/, '') + '/ws/documents/' + encodeURIComponent(this.docId);
    u.search = '';
    u.searchParams.set('client_id', this.clientId);
    if (this.rev !== null && !this._reload) u.searchParams.set('since', String(this.rev));
    return u.toString();
  }

  _open() {
    if (this._stopped || this._paused || this._ws) return;
    this._setStatus(this.rev === null && this._attempts === 0 ? 'connecting' : this._disconnectedStatus());
    let ws;
    try {
      ws = new this.WebSocketImpl(this._wsUrl());
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
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
    const fatal = FATAL_CODES.has(code);
    const ours = this.inflight && msg.seq != null && msg.seq === this.inflight.seq;
    this._emitError(code, msg.message, msg.seq, fatal);
    if (fatal) {
      this._stopped = true;
      clearTimeout(this._timer);
      this._drop();
      this._setStatus('closed');
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
    if (this.inflight || !this.buffer || !this._welcomed || !this._ws) return;
    const op = this.buffer;
    const seq = this.nextSeq++;
    this.inflight = { seq, op, edits: this.bufferEdits };
    this.buffer = null;
    this.bufferEdits = 0;
    this._send({ type: 'op', rev: this.rev, seq, op });
  }

  _sendPresence() {
    if (!this._presenceDirty || !this._presence) return;
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
      this.storage.setItem(this._key(), JSON.stringify({ clientId: this.clientId, nextSeq: this.nextSeq }));
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

  _emitError(code, message, seq, fatal = false) {
    this._dispatch('error', { code, message: message || '', text: describeError(code, message), seq: seq ?? null, fatal });
  }

  _dispatch(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
