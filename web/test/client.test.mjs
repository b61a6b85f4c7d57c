// Unit tests of the client library's state machine against an in-memory
// server (test/fake-server.mjs). The browser tests run the real server.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CollabClient, codePointLength, diffOp } from '../src/collab-client.js';
import { FakeServer, MemoryStorage, prng } from './fake-server.mjs';

function client(server, extra = {}) {
  return new CollabClient({
    docId: 'doc',
    url: 'http://fake.invalid',
    WebSocket: server.WebSocket,
    storage: new MemoryStorage(),
    backoff: { initial: 1, max: 5, factor: 2 },
    ...extra,
  });
}

function insertAt(c, pos, text) {
  c.submitOp(pos ? [pos, text] : [text]);
}

function events(c, name) {
  const seen = [];
  c.addEventListener(name, (e) => seen.push(e.detail));
  return seen;
}

test('code points and diffs', () => {
  assert.equal(codePointLength('a😭b'), 3);
  assert.equal(codePointLength(''), 0);
  assert.deepEqual(diffOp('a😭b', 'a😭xb'), [2, 'x']);
  assert.deepEqual(diffOp('abc', 'ac'), [1, { d: 1 }]);
  assert.deepEqual(diffOp('same', 'same'), []);
});

test('loads, edits, acks, and stays at one op in flight', async () => {
  const server = new FakeServer({ content: 'hi 😭' });
  const a = client(server);
  const ready = events(a, 'ready');
  await server.until(() => a.content !== null, 'welcome');
  assert.deepEqual(ready, [{ content: 'hi 😭', rev: 0 }]);
  assert.equal(a.status, 'connected');

  const sent = [];
  server.hooks.onOp = (_s, msg) => void sent.push(msg);
  insertAt(a, 4, '!');
  insertAt(a, 5, '?');
  insertAt(a, 6, '.');
  assert.equal(a.content, 'hi 😭!?.');
  assert.equal(a.pending, 3);
  assert.ok(a.inflight && a.buffer, 'one in flight, the rest buffered');
  await server.until(() => a.pending === 0, 'acks');
  assert.deepEqual(
    sent.map((m) => [m.seq, m.rev]),
    [
      [1, 0],
      [2, 1],
    ],
  );
  assert.equal(server.content, 'hi 😭!?.');
  assert.equal(a.rev, 2);
  a.close();
});

test('concurrent edits converge (randomized, with dropped connections)', async () => {
  for (let seed = 1; seed <= 25; seed++) {
    const rand = prng(seed * 7919);
    const server = new FakeServer({ content: 'start 😭 text', seed });
    const clients = [client(server), client(server), client(server)];
    await server.until(() => clients.every((c) => c.content !== null), 'welcomes');
    // Unique tokens are inserted, never deleted, so each must appear exactly once.
    const tokens = [];
    server.hooks.beforeAck = () => (rand() < 0.1 ? 'drop' : undefined);
    server.hooks.onOp = () => (rand() < 0.05 ? 'drop' : undefined);
    for (let i = 0; i < 60; i++) {
      const c = clients[Math.floor(rand() * clients.length)];
      // Only between tokens, so no token is split by another.
      const cps = Array.from(c.content);
      const spots = [0, ...cps.flatMap((ch, i) => (ch === '>' ? [i + 1] : []))];
      const pos = spots[Math.floor(rand() * spots.length)];
      const token = `<${clients.indexOf(c)}.${i}${rand() < 0.3 ? '🎉' : ''}>`;
      tokens.push(token);
      insertAt(c, pos, token);
      if (rand() < 0.1) c.goOffline();
      else if (rand() < 0.2) c.goOnline();
      for (let k = Math.floor(rand() * 6); k > 0; k--) server.step();
    }
    server.hooks = {};
    clients.forEach((c) => c.goOnline());
    await server.until(
      () => clients.every((c) => c.status === 'connected' && c.pending === 0 && c.rev === server.rev),
      `convergence (seed ${seed})`,
    );
    for (const c of clients) assert.equal(c.content, server.content, `seed ${seed}`);
    for (const t of tokens) assert.equal(server.content.split(t).length - 1, 1, `token ${t} once (seed ${seed})`);
    const keys = server.ops.map((o) => `${o.client_id}:${o.seq}`);
    assert.equal(new Set(keys).size, keys.length, 'no (client_id, seq) committed twice');
    clients.forEach((c) => c.close());
  }
});

test('deletes and inserts converge (randomized)', async () => {
  for (let seed = 1; seed <= 25; seed++) {
    const rand = prng(seed * 104729);
    const server = new FakeServer({ content: '😭😭 abc def 🎉', seed });
    const clients = [client(server), client(server)];
    await server.until(() => clients.every((c) => c.content !== null), 'welcomes');
    server.hooks.beforeAck = () => (rand() < 0.1 ? 'drop' : undefined);
    for (let i = 0; i < 60; i++) {
      const c = clients[Math.floor(rand() * clients.length)];
      const len = codePointLength(c.content);
      const pos = Math.floor(rand() * (len + 1));
      if (rand() < 0.4 && pos < len) {
        const n = 1 + Math.floor(rand() * Math.min(3, len - pos));
        c.submitOp(pos ? [pos, { d: n }] : [{ d: n }]);
      } else {
        insertAt(c, pos, rand() < 0.5 ? '😀' : 'x');
      }
      for (let k = Math.floor(rand() * 4); k > 0; k--) server.step();
    }
    server.hooks = {};
    await server.until(() => clients.every((c) => c.status === 'connected' && c.pending === 0 && c.rev === server.rev), 'convergence');
    for (const c of clients) assert.equal(c.content, server.content, `seed ${seed}`);
    clients.forEach((c) => c.close());
  }
});

test('own op in the resume welcome is its ack; not resent', async () => {
  const server = new FakeServer({ content: 'abc' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  const sent = [];
  let dropped = false;
  server.hooks.beforeAck = () => (dropped ? undefined : ((dropped = true), 'drop'));
  server.hooks.onOp = (_s, msg) => void sent.push(msg.seq);
  const acks = events(a, 'ack');
  insertAt(a, 3, 'd');
  await server.until(() => a.pending === 0, 'ack via resume');
  assert.deepEqual(sent, [1], 'the committed op was not resent');
  assert.deepEqual(acks, [{ seq: 1, rev: 1 }]);
  assert.equal(server.content, 'abcd');
  assert.equal(server.ops.length, 1);
  a.close();
});

test('an op lost before the server saw it is resent with the same seq', async () => {
  const server = new FakeServer({ content: 'abc' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  const seen = [];
  server.hooks.onOp = (_s, msg) => {
    seen.push(msg.seq);
    return seen.length === 1 ? 'drop' : undefined;
  };
  insertAt(a, 0, '>');
  await server.until(() => a.pending === 0, 'ack after resend');
  assert.deepEqual(seen, [1, 1]);
  assert.equal(server.content, '>abc');
  a.close();
});

test('client id and next seq survive a reload (same storage)', async () => {
  const server = new FakeServer({ content: '' });
  const storage = new MemoryStorage();
  const a = client(server, { storage });
  await server.until(() => a.content !== null, 'welcome');
  insertAt(a, 0, 'a');
  await server.until(() => a.pending === 0, 'ack');
  insertAt(a, 1, 'b');
  await server.until(() => a.pending === 0, 'ack');
  a.close();
  const b = client(server, { storage });
  assert.equal(b.clientId, a.clientId);
  assert.equal(b.nextSeq, 3);
  await server.until(() => b.content !== null, 'welcome');
  insertAt(b, 2, 'c');
  await server.until(() => b.pending === 0, 'ack');
  assert.equal(server.content, 'abc', 'seq 3 is new, not a duplicate');
  b.close();
});

test('a copy of the storage taken while a client is live (a duplicated tab) gets its own id', async () => {
  const server = new FakeServer({ content: '' });
  const storage = new MemoryStorage();
  const first = client(server, { storage });
  await server.until(() => first.content !== null, 'welcome');
  insertAt(first, 0, 'a');
  await server.until(() => first.pending === 0, 'ack');
  first.close();
  // The reloaded page takes the record over...
  const reloaded = client(server, { storage });
  assert.equal(reloaded.clientId, first.clientId);
  await server.until(() => reloaded.content !== null, 'welcome');
  // ... and "Duplicate tab" copies the storage while it is live.
  const copy = new MemoryStorage();
  for (const [k, v] of storage.map) copy.setItem(k, v);
  const duplicate = client(server, { storage: copy });
  assert.notEqual(duplicate.clientId, reloaded.clientId);
  await server.until(() => duplicate.content !== null, 'welcome');
  // Both type their first op at once: neither is taken for the other's duplicate.
  insertAt(reloaded, 1, 'b');
  insertAt(duplicate, 1, 'c');
  await server.until(() => reloaded.pending === 0 && duplicate.pending === 0, 'acks');
  await server.until(() => reloaded.content.length === 3 && duplicate.content.length === 3, 'sync');
  assert.equal([...server.content].sort().join(''), 'abc');
  assert.equal(reloaded.content, server.content);
  assert.equal(duplicate.content, server.content);
  reloaded.close();
  duplicate.close();
});

test('offline queue: edits while offline are sent once on reconnect', async () => {
  const server = new FakeServer({ content: '' });
  const a = client(server);
  const statuses = events(a, 'status');
  await server.until(() => a.content !== null, 'welcome');
  a.goOffline();
  assert.equal(a.status, 'offline');
  for (const ch of ['o', 'f', 'f', '😭']) insertAt(a, codePointLength(a.content), ch);
  assert.equal(a.pending, 4);
  assert.deepEqual(statuses.at(-1), { status: 'offline', pending: 4 });
  assert.equal(server.content, '');
  a.goOnline();
  await server.until(() => a.pending === 0 && a.status === 'connected', 'sync');
  assert.equal(server.content, 'off😭');
  assert.equal(server.ops.length, 1, 'the queue is composed into one op');
  a.close();
});

test('rate_limited: the same op is retried later', async () => {
  const server = new FakeServer({ content: '' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  const errors = events(a, 'error');
  let n = 0;
  server.hooks.onOp = () => (++n === 1 ? { error: 'rate_limited' } : undefined);
  insertAt(a, 0, 'z');
  await server.until(() => a.pending === 0, 'retry');
  assert.equal(server.content, 'z');
  assert.equal(errors[0].code, 'rate_limited');
  assert.match(errors[0].text, /too quickly/);
  a.close();
});

test('unavailable: the edit is kept and resent, not dropped', async () => {
  const server = new FakeServer({ content: 'ab' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  const errors = events(a, 'error');
  let n = 0;
  server.hooks.onOp = () => (++n === 1 ? { error: 'unavailable' } : undefined);
  insertAt(a, 2, 'c');
  await server.until(() => a.pending === 0, 'resent');
  assert.equal(server.content, 'abc');
  assert.equal(a.content, 'abc');
  assert.equal(errors[0].code, 'unavailable');
  a.close();
});

test('a refused op (too_large) is dropped and the server copy restored', async () => {
  const server = new FakeServer({ content: 'keep' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  const remote = events(a, 'remoteop');
  const errors = events(a, 'error');
  server.hooks.onOp = () => ({ error: 'too_large' });
  insertAt(a, 4, ' and more');
  await server.until(() => a.pending === 0 && a.status === 'connected' && a.content === 'keep', 'resync');
  assert.equal(errors[0].code, 'too_large');
  assert.deepEqual(remote.at(-1).op, [4, { d: 9 }]);
  assert.equal(remote.at(-1).reset, true);
  a.close();
});

test('fatal errors stop reconnecting', async () => {
  const server = new FakeServer({ content: '' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  const errors = events(a, 'error');
  const [sock] = server.sockets;
  server._toClient(sock, { type: 'error', code: 'document_deleted', message: 'gone' });
  await server.until(() => a.status === 'closed', 'closed');
  assert.equal(errors[0].fatal, true);
  assert.match(errors[0].text, /deleted/);
});

test('presence: peers from welcome, moves, leave, transformed by edits', async () => {
  const server = new FakeServer({ content: 'hello' });
  const a = client(server);
  await server.until(() => a.content !== null, 'welcome');
  a.setPresence([1, 3], { name: 'Ann', color: '#ff0000' });
  await server.until(() => server.presence.size === 1, 'presence stored');
  const b = client(server);
  await server.until(() => b.content !== null, 'welcome b');
  assert.deepEqual(b.peers.get(a.clientId), { selection: [1, 3], user: { name: 'Ann', color: '#ff0000' } });
  insertAt(b, 0, '😭😭');
  assert.deepEqual(b.peers.get(a.clientId).selection, [3, 5], 'local edits move peers');
  const leaves = events(b, 'leave');
  a.close();
  await server.until(() => leaves.length === 1, 'leave');
  assert.equal(b.peers.size, 0);
  b.close();
});

// ---- access tokens ---------------------------------------------------------------

const nowSecs = () => Math.floor(Date.now() / 1000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tokenOf = (url) => new URL(url).searchParams.get('token');
const sinceOf = (url) => new URL(url).searchParams.get('since');

/** A token-mode fake server whose tokens are looked up in `grants` (token -> grant). */
function tokenServer(grants, content = 'shared text') {
  return new FakeServer({
    content,
    auth: (token) => grants.get(token) || { error: 'unauthorized', message: 'invalid token' },
  });
}

test('open mode: role admin, exp null, no token in the URL, no refresh', async () => {
  const server = new FakeServer({ content: 'x' });
  let refreshed = 0;
  const a = client(server, { refreshToken: async () => (refreshed++, 'never') });
  const auth = events(a, 'auth');
  await server.until(() => a.content !== null, 'welcome');
  assert.equal(a.role, 'admin');
  assert.equal(a.exp, null);
  assert.equal(a.readOnly, false);
  assert.deepEqual(auth, [{ role: 'admin', exp: null, previousRole: null }]);
  assert.equal(tokenOf(server.urls[0]), null);
  await sleep(50);
  assert.equal(refreshed, 0);
  a.close();
});

test('token: sent URL-encoded at connect; role and exp come from the welcome', async () => {
  const token = 'eyJ.a+b/c=.sig';
  const exp = nowSecs() + 3600;
  const server = tokenServer(new Map([[token, { sub: 'ann', role: 'write', exp }]]));
  const a = client(server, { token });
  await server.until(() => a.content !== null, 'welcome');
  assert.equal(tokenOf(server.urls[0]), token);
  assert.ok(server.urls[0].includes('token=eyJ.a%2Bb%2Fc%3D.sig'), server.urls[0]);
  assert.equal(a.role, 'write');
  assert.equal(a.exp, exp);
  insertAt(a, 0, '> ');
  await server.until(() => a.pending === 0, 'ack');
  assert.equal(server.content, '> shared text');
  assert.equal(server.ops[0].client_id, a.clientId);
  a.close();
});

test('refresh: called before exp, sent as an auth frame, and used for reconnects', async () => {
  const t0 = Date.now();
  const exp1 = Math.floor(t0 / 1000) + 2;
  const exp2 = nowSecs() + 3600;
  const grants = new Map([
    ['t1', { sub: 'ann', role: 'write', exp: exp1 }],
    ['t2', { sub: 'ann', role: 'admin', exp: exp2 }],
  ]);
  const server = tokenServer(grants);
  const calls = [];
  const a = client(server, {
    token: 't1',
    refreshToken: async () => {
      calls.push(Date.now());
      return 't2';
    },
  });
  const auth = events(a, 'auth');
  const renewed = events(a, 'token');
  await server.until(() => a.content !== null, 'welcome');
  assert.equal(a.exp, exp1);
  await server.until(() => a.exp === exp2, 'the auth reply', 5000);
  assert.equal(calls.length, 1);
  const lifetime = exp1 * 1000 - t0;
  assert.ok(calls[0] - t0 >= lifetime * 0.5, `refreshed too early: ${calls[0] - t0} ms of ${lifetime}`);
  assert.ok(calls[0] < exp1 * 1000, 'refreshed before exp');
  assert.deepEqual(
    server.authFrames.map((f) => f.token),
    ['t2'],
  );
  assert.equal(a.role, 'admin');
  assert.deepEqual(auth.at(-1), { role: 'admin', exp: exp2, previousRole: 'write' });
  assert.deepEqual(renewed, [{ token: 't2' }]);
  assert.equal(a.token, 't2');

  // A dropped connection comes back with the new token, and resumes.
  server.killAll();
  await server.until(() => server.urls.length === 2 && a.status === 'connected', 'reconnect');
  assert.equal(tokenOf(server.urls[1]), 't2');
  assert.equal(sinceOf(server.urls[1]), '0');
  insertAt(a, 0, 'ok ');
  await server.until(() => a.pending === 0, 'ack');
  assert.equal(server.content, 'ok shared text');
  a.close();
});

test('refresh: a token that runs out while disconnected is renewed before reconnecting', async () => {
  const exp1 = nowSecs() + 3; // within the last few seconds: stale for a reconnect
  const grants = new Map([
    ['t1', { sub: 'ann', role: 'write', exp: exp1 }],
    ['t2', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
  ]);
  const server = tokenServer(grants);
  let release;
  const gate = new Promise((r) => (release = r));
  let calls = 0;
  const a = client(server, {
    token: 't1',
    refreshToken: async () => {
      calls++;
      await gate;
      return 't2';
    },
  });
  await server.until(() => a.content !== null, 'welcome');
  a.goOffline();
  insertAt(a, 0, 'offline ');
  a.goOnline();
  await sleep(30);
  assert.equal(calls, 1, 'refreshToken was asked first');
  assert.equal(server.urls.length, 1, 'no connection with the stale token');
  release();
  await server.until(() => a.status === 'connected' && a.pending === 0, 'reconnect and sync');
  assert.deepEqual(server.urls.slice(1).map(tokenOf), ['t2']);
  assert.equal(server.content, 'offline shared text');
  assert.equal(server.authFrames.length, 0, 'the new token went in the URL, no auth frame needed');
  a.close();
});

test('refresh failures are reported and retried', async () => {
  const exp1 = nowSecs() + 2;
  const grants = new Map([
    ['t1', { sub: 'ann', role: 'write', exp: exp1 }],
    ['t2', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
  ]);
  const server = tokenServer(grants);
  let calls = 0;
  const a = client(server, {
    token: 't1',
    refreshToken: async () => {
      if (++calls === 1) throw new Error('identity provider down');
      return 't2';
    },
  });
  const errors = events(a, 'error');
  await server.until(() => a.content !== null, 'welcome');
  await server.until(() => a.token === 't2' && a.exp !== exp1, 'the second refresh', 6000);
  assert.equal(calls, 2);
  assert.equal(errors[0].code, 'token_refresh_failed');
  assert.equal(errors[0].fatal, false);
  assert.equal(a.status, 'connected');
  a.close();
});

test('a refresh for another user ends the session', async () => {
  const grants = new Map([
    ['t1', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
    ['bob', { sub: 'bob', role: 'write', exp: nowSecs() + 3600 }],
  ]);
  const server = tokenServer(grants);
  const a = client(server, { token: 't1' });
  const errors = events(a, 'error');
  await server.until(() => a.content !== null, 'welcome');
  a.setToken('bob');
  await server.until(() => a.status === 'unauthorized', 'unauthorized');
  assert.equal(errors[0].fatal, true);
  await sleep(30);
  assert.equal(server.urls.length, 1, 'no reconnect');
});

test('a rate-limited auth frame is sent again', async () => {
  const grants = new Map([
    ['t1', { sub: 'ann', role: 'read', exp: nowSecs() + 3600 }],
    ['t2', { sub: 'ann', role: 'write', exp: nowSecs() + 7200 }],
  ]);
  const server = tokenServer(grants);
  const a = client(server, { token: 't1' });
  await server.until(() => a.content !== null, 'welcome');
  let n = 0;
  server.hooks.onAuth = () => (++n === 1 ? 'rate_limited' : undefined);
  a.setToken('t2');
  await server.until(() => a.role === 'write', 'the second auth frame applied', 5000);
  assert.deepEqual(server.authFrames.map((f) => f.token), ['t2', 't2']);
  assert.equal(a.status, 'connected');
  a.close();
});

test('a refresh whose token does not grant this document is final (forbidden, not a read-only downgrade)', async () => {
  const grants = new Map([
    ['t1', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
    ['other-doc', { error: 'forbidden', message: 'no access to this document' }],
  ]);
  const server = tokenServer(grants);
  const a = client(server, { token: 't1' });
  const errors = events(a, 'error');
  await server.until(() => a.content !== null, 'welcome');
  a.setToken('other-doc');
  await server.until(() => a.status === 'forbidden', 'forbidden');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].fatal, true);
  assert.equal(a.role, 'write', 'not mistaken for a downgrade');
  await sleep(30);
  while (server.step());
  assert.equal(server.urls.length, 1, 'no reconnect');
});

/** A JWT-shaped token whose payload names `sub` (the fake server does not check signatures). */
const jwtFor = (sub, tag = '') => `e30.${Buffer.from(JSON.stringify({ sub, tag })).toString('base64url')}.sig`;

test("another user's token in the same tab does not reuse the stored client id", async () => {
  const ann = jwtFor('ann');
  const bob = jwtFor('bob');
  const grants = new Map([
    [ann, { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
    [bob, { sub: 'bob', role: 'write', exp: nowSecs() + 3600 }],
  ]);
  const server = tokenServer(grants, '');
  const storage = new MemoryStorage();
  const a = client(server, { token: ann, storage });
  await server.until(() => a.content !== null, 'welcome');
  insertAt(a, 0, 'a');
  await server.until(() => a.pending === 0, 'ack');
  a.close();
  assert.equal(JSON.parse(storage.getItem('collab:doc')).sub, 'ann');
  // The same user after a reload keeps the id and the seq...
  const again = client(server, { token: jwtFor('ann', 'reloaded'), storage });
  assert.equal(again.clientId, a.clientId);
  assert.equal(again.nextSeq, 2);
  again.close();
  // ... another user gets an id of their own.
  const b = client(server, { token: bob, storage });
  assert.notEqual(b.clientId, a.clientId);
  assert.equal(b.nextSeq, 1);
  await server.until(() => b.content !== null, 'welcome');
  insertAt(b, 1, 'b');
  await server.until(() => b.pending === 0, 'ack');
  assert.equal(server.content, 'ab');
  b.close();
});

test('a client id refused as belonging to another user is replaced once, keeping unsynced edits', async () => {
  const bob = jwtFor('bob');
  const server = tokenServer(new Map([[bob, { sub: 'bob', role: 'write', exp: nowSecs() + 3600 }]]), 'x');
  server.owners.set('shared', 'ann');
  const storage = new MemoryStorage();
  storage.setItem('collab:doc', JSON.stringify({ clientId: 'shared', nextSeq: 7, sub: 'bob' }));
  const b = client(server, { token: bob, storage });
  assert.equal(b.clientId, 'shared');
  const errors = events(b, 'error');
  await server.until(() => b.content !== null, 'welcome under a new id');
  assert.notEqual(b.clientId, 'shared');
  assert.equal(b.status, 'connected');
  assert.deepEqual(errors, []);
  insertAt(b, 1, '!');
  await server.until(() => b.pending === 0, 'ack');
  assert.equal(server.content, 'x!');
  assert.equal(server.ops[0].client_id, b.clientId);
  assert.equal(server.ops[0].seq, 1);
  b.close();
});

test('an op in flight and buffered edits survive a client id refusal on reconnect', async () => {
  const bob = jwtFor('bob');
  const server = tokenServer(new Map([[bob, { sub: 'bob', role: 'write', exp: nowSecs() + 3600 }]]), 'x');
  const b = client(server, { token: bob, clientId: undefined });
  await server.until(() => b.content !== null, 'welcome');
  const first = b.clientId;
  server.hooks.onOp = () => 'drop'; // lost with the connection, never committed
  insertAt(b, 1, '1');
  insertAt(b, 2, '2');
  assert.ok(b.inflight && b.buffer);
  server.owners.set(first, 'ann'); // meanwhile, someone else's
  await server.until(() => server.urls.length >= 2, 'the reconnect');
  server.hooks = {};
  await server.until(() => b.status === 'connected' && b.pending === 0, 'sync under a new id');
  assert.notEqual(b.clientId, first);
  assert.equal(server.content, 'x12');
  assert.deepEqual(server.ops.map((o) => [o.client_id, o.seq]), [[b.clientId, 1]]);
  b.close();
});

for (const [code, message, reason] of [
  ['unauthorized', 'token expired', 'expired'],
  ['unauthorized', 'token revoked', 'revoked'],
  ['unauthorized', 'invalid token', null],
  ['forbidden', 'no access to this document', null],
]) {
  test(`${code} (${message}) at connect is final: no reconnect, status ${code}`, async () => {
    const server = new FakeServer({ content: 'secret', auth: () => ({ error: code, message }) });
    const a = client(server, { token: 'whatever' });
    const errors = events(a, 'error');
    const statuses = events(a, 'status');
    await server.until(() => a.status === code, code);
    await sleep(30);
    for (let i = 0; i < 20; i++) server.step();
    assert.equal(server.urls.length, 1, 'no reconnect');
    assert.equal(a.content, null);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, code);
    assert.equal(errors[0].fatal, true);
    assert.equal(errors[0].message, message);
    assert.equal(errors[0].reason, reason);
    assert.equal(statuses.at(-1).status, code);
    if (reason === 'revoked') assert.match(errors[0].text, /revoked/);
    if (reason === 'expired') assert.match(errors[0].text, /expired/);
    if (code === 'forbidden') assert.match(errors[0].text, /do not have access/);
  });
}

test('a session ended while connected (revoked) is final; unsynced edits stay in memory', async () => {
  const server = tokenServer(new Map([['t1', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }]]));
  const a = client(server, { token: 't1' });
  const errors = events(a, 'error');
  await server.until(() => a.content !== null, 'welcome');
  a.goOffline();
  insertAt(a, 0, 'x');
  a.goOnline();
  const sock = [...server.sockets].find((s) => s.readyState === 1);
  server.hooks.onOp = () => 'drop';
  server.endSession(sock, 'unauthorized', 'token revoked');
  await server.until(() => a.status === 'unauthorized', 'unauthorized');
  assert.equal(errors.at(-1).reason, 'revoked');
  await sleep(30);
  while (server.step());
  assert.equal(server.sockets.size, 0);
  assert.equal(server.urls.length, 2, 'no reconnect');
  assert.equal(a.content, 'xshared text');
});

test('a read connection refuses local edits and sends no presence', async () => {
  const server = tokenServer(new Map([['r', { sub: 'ann', role: 'read', exp: nowSecs() + 3600 }]]));
  const a = client(server, { token: 'r' });
  const remote = events(a, 'remoteop');
  await server.until(() => a.content !== null, 'welcome');
  assert.equal(a.role, 'read');
  assert.equal(a.readOnly, true);
  assert.throws(() => insertAt(a, 0, 'no'), (e) => e.code === 'read_only');
  assert.equal(a.content, 'shared text');
  assert.equal(a.pending, 0);
  a.setPresence([0, 0], { name: 'Ann', color: '#ff0000' });
  for (let i = 0; i < 20; i++) server.step();
  assert.equal(server.presence.size, 0);
  assert.equal(server.refused, undefined, 'nothing was sent for the server to refuse');
  // Others' edits still arrive.
  server.auth = (t) => (t === 'w' ? { sub: 'bob', role: 'write', exp: nowSecs() + 3600 } : { sub: 'ann', role: 'read', exp: nowSecs() + 3600 });
  const b = client(server, { token: 'w' });
  await server.until(() => b.content !== null, 'welcome b');
  insertAt(b, 0, 'Bob: ');
  await server.until(() => a.content === 'Bob: shared text', 'the remote edit');
  assert.equal(remote.length, 1);
  a.close();
  b.close();
});

test('a refresh that downgrades to read: the refused op and later edits are dropped, the server content comes back', async () => {
  const grants = new Map([
    ['w', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
    ['r', { sub: 'ann', role: 'read', exp: nowSecs() + 7200 }],
  ]);
  const server = tokenServer(grants);
  const a = client(server, { token: 'w' });
  const errors = events(a, 'error');
  const auth = events(a, 'auth');
  const remote = events(a, 'remoteop');
  await server.until(() => a.content !== null, 'welcome');
  // The new token goes out first; two edits follow before its reply comes.
  a.setToken('r');
  insertAt(a, 0, 'one ');
  insertAt(a, 4, 'two ');
  assert.ok(a.inflight && a.buffer);
  await server.until(() => a.status === 'connected' && a.content === 'shared text' && a.pending === 0 && server.urls.length === 2, 'resync');
  assert.equal(server.content, 'shared text', 'nothing changed on the server');
  assert.equal(server.ops.length, 0);
  assert.equal(a.role, 'read');
  assert.ok(auth.some((e) => e.role === 'read' && e.previousRole === 'write'));
  assert.equal(sinceOf(server.urls[1]), null, 'reloaded without since');
  assert.equal(tokenOf(server.urls[1]), 'r');
  assert.ok(errors.some((e) => !e.fatal && (e.code === 'forbidden' || e.code === 'read_only')), JSON.stringify(errors));
  assert.equal(remote.at(-1).reset, true);
  assert.throws(() => insertAt(a, 0, 'no'), (e) => e.code === 'read_only');
  a.close();
});

test('forbidden for the op in flight: local edits dropped, remote edits kept, role read', async () => {
  const grants = new Map([
    ['ann', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
    ['bob', { sub: 'bob', role: 'write', exp: nowSecs() + 3600 }],
  ]);
  const server = tokenServer(grants, 'abc');
  const a = client(server, { token: 'ann' });
  const b = client(server, { token: 'bob' });
  await server.until(() => a.content !== null && b.content !== null, 'welcomes');
  const errors = events(a, 'error');
  const auth = events(a, 'auth');
  // Ann's access drops to read while her op is on its way (as a refresh
  // whose reply she has not seen yet would do).
  const annSock = [...server.sockets].find((s) => s.grant.sub === 'ann');
  annSock.grant = { ...annSock.grant, role: 'read' };
  grants.set('ann', annSock.grant);
  insertAt(b, 3, '-bob');
  insertAt(a, 0, 'ann-');
  insertAt(a, 4, 'more-');
  await server.until(
    () => a.status === 'connected' && a.pending === 0 && b.pending === 0 && a.content === server.content && b.content === server.content && a.rev === server.rev,
    'resync',
  );
  assert.equal(server.content, 'abc-bob');
  const refused = errors.find((e) => e.code === 'forbidden');
  assert.ok(refused, JSON.stringify(errors));
  assert.equal(refused.fatal, false);
  assert.equal(refused.seq, 1);
  assert.match(refused.text, /only read/);
  assert.equal(a.role, 'read');
  assert.deepEqual(auth.at(-1).role, 'read');
  a.close();
  b.close();
});

test('an upgrade from read to write by refresh lets the page edit, and presence is sent', async () => {
  const grants = new Map([
    ['r', { sub: 'ann', role: 'read', exp: nowSecs() + 3600 }],
    ['w', { sub: 'ann', role: 'write', exp: nowSecs() + 3600 }],
  ]);
  const server = tokenServer(grants);
  const a = client(server, { token: 'r' });
  await server.until(() => a.content !== null, 'welcome');
  a.setPresence([1, 1], { name: 'Ann', color: '#00ff00' });
  a.setToken('w');
  await server.until(() => a.role === 'write', 'the auth reply');
  await server.until(() => server.presence.size === 1, 'presence sent after the upgrade');
  insertAt(a, 0, '+');
  await server.until(() => a.pending === 0, 'ack');
  assert.equal(server.content, '+shared text');
  a.close();
});
