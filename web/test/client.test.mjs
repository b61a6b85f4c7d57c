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
