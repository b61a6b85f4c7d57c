// An in-memory stand-in for the collab WebSocket endpoint, for testing the
// client library's state machine in Node without a browser or a real server.
// It follows the protocol's rules (transform against later ops with
// side "left", exactly-once per (client_id, seq), resume welcomes), using
// ot-text-unicode, and delivers messages through per-direction FIFO queues
// that a seeded scheduler interleaves.
//
// Access control: with `auth` (a function token -> {sub, role, exp} or
// {error: 'unauthorized' | 'forbidden', message}) the server is in token mode:
// it checks `?token=` at connect (refusing with an error frame, then close
// 1008), refuses ops and presence from `read` connections (staying open),
// answers `auth` frames, and can end a session (`endSession`). Without it,
// welcomes say role "admin" and exp null, as the real server's open mode.

import otText from 'ot-text-unicode';

const { type } = otText;

export function prng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

export class FakeServer {
  constructor({ content = '', seed = 1, auth = null } = {}) {
    this.content = content;
    this.auth = auth;
    this.urls = []; // every connection's URL, in order
    this.authFrames = []; // every `auth` frame received: {sock, token}
    this.owners = new Map(); // token mode: client id -> the sub who committed under it
    this.rev = 0;
    this.ops = []; // {rev, op, client_id, seq}
    this.committed = new Map(); // "cid:seq" -> rev
    this.sockets = new Set();
    this.presence = new Map(); // cid -> {selection, user}
    this.queues = []; // [{deliver, q: []}]
    this.rand = prng(seed);
    this.hooks = {}; // beforeAck(sock, seq, rev) -> 'drop' to kill instead of acking; onOp(sock, msg) -> 'drop' | {error}
    this.nextGen = 1;
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url) {
        super(server, url);
      }
    };
  }

  // ---- network ---------------------------------------------------------------

  _post(queue, fn) {
    queue.push(fn);
  }

  /** Deliver one queued message (random channel); false if nothing queued. */
  step() {
    const busy = [];
    for (const s of this.sockets) {
      if (s.toClient.length) busy.push(s.toClient);
      if (s.toServer.length) busy.push(s.toServer);
    }
    for (const q of this.orphans || []) if (q.length) busy.push(q);
    if (!busy.length) return false;
    const q = busy[Math.floor(this.rand() * busy.length)];
    q.shift()();
    return true;
  }

  /** Run the network until `cond()` holds. */
  async until(cond, what = 'condition', timeout = 5000) {
    const end = Date.now() + timeout;
    let n = 0;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      if (!this.step() || ++n % 50 === 0) await new Promise((r) => setTimeout(r, 1));
    }
  }

  // ---- protocol ----------------------------------------------------------------

  _accept(sock) {
    const u = new URL(sock.url);
    this.urls.push(sock.url);
    sock.clientId = u.searchParams.get('client_id') || 'gen' + this.nextGen++;
    const since = u.searchParams.get('since');
    sock.grant = { sub: null, role: 'admin', exp: null };
    if (this.auth) {
      const token = u.searchParams.get('token');
      const grant = token ? this.auth(token) : { error: 'unauthorized', message: 'missing token' };
      if (!grant || grant.error) {
        this.sockets.add(sock);
        return this.endSession(sock, (grant && grant.error) || 'unauthorized', (grant && grant.message) || 'bad token');
      }
      const owner = this.owners.get(sock.clientId);
      if (owner !== undefined && owner !== grant.sub) {
        this.sockets.add(sock);
        return this.endSession(sock, 'forbidden', `client_id ${sock.clientId} belongs to another user; connect with a client_id of your own`);
      }
      sock.grant = grant;
    }
    this.sockets.add(sock);
    const peers = [...this.presence].filter(([cid]) => cid !== sock.clientId).map(([cid, p]) => ({ client_id: cid, ...p }));
    let welcome;
    if (since !== null && Number(since) <= this.rev && !this.forgetHistory) {
      welcome = { type: 'welcome', client_id: sock.clientId, rev: this.rev, ops: this.ops.slice(Number(since)), peers };
    } else {
      welcome = { type: 'welcome', client_id: sock.clientId, rev: this.rev, content: this.content, peers };
    }
    welcome.role = sock.grant.role;
    welcome.exp = sock.grant.exp;
    this._toClient(sock, welcome);
  }

  _toClient(sock, msg) {
    const data = JSON.stringify(msg);
    sock.toClient.push(() => {
      if (sock.readyState === 1 && sock.onmessage) sock.onmessage({ data });
    });
  }

  /** Send an error frame, then close the connection (1008), as a refusal. */
  endSession(sock, code, message) {
    this._toClient(sock, { type: 'error', code, message });
    sock.toClient.push(() => {
      if (sock.readyState === 3) return;
      sock.readyState = 3;
      this._gone(sock);
      if (sock.onclose) sock.onclose({ code: 1008 });
    });
  }

  _fromClient(sock, data) {
    const msg = JSON.parse(data);
    if (msg.type === 'auth') {
      this.authFrames.push({ sock, token: msg.token });
      if (this.hooks.onAuth && this.hooks.onAuth(sock, msg) === 'rate_limited') {
        return this._toClient(sock, { type: 'error', code: 'rate_limited', message: 'too many auth frames' });
      }
      const grant = this.auth ? this.auth(msg.token) : null;
      if (!grant || grant.error || grant.sub !== sock.grant.sub) {
        const code = grant && grant.error === 'forbidden' ? 'forbidden' : 'unauthorized';
        return this.endSession(sock, code, (grant && grant.message) || 'bad token');
      }
      sock.grant = grant;
      return this._toClient(sock, { type: 'auth', role: grant.role, exp: grant.exp });
    }
    if ((msg.type === 'presence' || msg.type === 'op') && sock.grant.role === 'read') {
      const refusal = { type: 'error', code: 'forbidden', message: 'read only' };
      if (msg.type === 'op') refusal.seq = msg.seq;
      this.refused = (this.refused || 0) + 1;
      return this._toClient(sock, refusal);
    }
    if (msg.type === 'presence') {
      const p = { selection: msg.selection, user: msg.user || (this.presence.get(sock.clientId) || {}).user || null };
      this.presence.set(sock.clientId, p);
      for (const s of this.sockets) if (s !== sock) this._toClient(s, { type: 'presence', client_id: sock.clientId, ...p });
      return;
    }
    if (msg.type !== 'op') return this._toClient(sock, { type: 'error', code: 'bad_message', message: 'unknown type' });
    const verdict = this.hooks.onOp && this.hooks.onOp(sock, msg);
    if (verdict === 'drop') return this.kill(sock);
    if (verdict && verdict.error) return this._toClient(sock, { type: 'error', code: verdict.error, message: verdict.error, seq: msg.seq });
    const key = `${sock.clientId}:${msg.seq}`;
    if (this.committed.has(key)) return this._toClient(sock, { type: 'ack', seq: msg.seq, rev: this.committed.get(key) });
    if (msg.rev > this.rev) return this._toClient(sock, { type: 'error', code: 'rev_out_of_range', message: 'rev', seq: msg.seq });
    let op = msg.op;
    try {
      for (const past of this.ops.slice(msg.rev)) op = type.transform(op, past.op, 'left');
      this.content = type.apply(this.content, op);
    } catch (e) {
      return this._toClient(sock, { type: 'error', code: 'invalid_op', message: String(e), seq: msg.seq });
    }
    op = type.normalize(op);
    this.rev++;
    this.ops.push({ rev: this.rev, op, client_id: sock.clientId, seq: msg.seq, created_at: new Date(0).toISOString() });
    this.committed.set(key, this.rev);
    if (sock.grant.sub !== null) this.owners.set(sock.clientId, sock.grant.sub);
    for (const p of this.presence.values()) if (p.selection) p.selection = type.transformSelection(p.selection, op);
    for (const s of this.sockets) {
      if (s !== sock) this._toClient(s, { type: 'op', rev: this.rev, op, client_id: sock.clientId, seq: msg.seq, author: sock.grant.sub });
    }
    if (this.hooks.beforeAck && this.hooks.beforeAck(sock, msg.seq, this.rev) === 'drop') return this.kill(sock);
    this._toClient(sock, { type: 'ack', seq: msg.seq, rev: this.rev });
  }

  _gone(sock) {
    if (!this.sockets.delete(sock)) return;
    this.presence.delete(sock.clientId);
    for (const s of this.sockets) this._toClient(s, { type: 'leave', client_id: sock.clientId });
  }

  /** Drop a connection from the server side (messages in transit are lost). */
  kill(sock) {
    if (sock.readyState === 3) return;
    sock.readyState = 3;
    sock.toClient.length = 0;
    sock.toServer.length = 0;
    this._gone(sock);
    const q = [() => sock.onclose && sock.onclose({ code: 1006 })];
    this.orphans = (this.orphans || []).filter((x) => x.length).concat([q]);
  }

  killAll() {
    for (const s of [...this.sockets]) this.kill(s);
  }
}

class FakeSocket {
  constructor(server, url) {
    this.server = server;
    this.url = url;
    this.readyState = 1;
    this.toClient = [];
    this.toServer = [];
    this.onmessage = this.onclose = this.onerror = null;
    server._accept(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error('socket not open');
    this.toServer.push(() => {
      if (this.server.sockets.has(this)) this.server._fromClient(this, data);
    });
  }
  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    // Messages already sent still reach the server (TCP), then it sees the close.
    this.toServer.push(() => this.server._gone(this));
    this.toClient.length = 0;
    const rest = this.toServer;
    this.server.orphans = (this.server.orphans || []).filter((x) => x.length).concat([rest]);
  }
}

export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}
