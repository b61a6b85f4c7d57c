// Browser tests: the real `collab` binary and headless Chromium.
//
//   COLLAB_BIN=../target/debug/collab node --test test/browser.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, mintToken, newUser, restClient, startServer, waitFor, watchErrors } from './harness.mjs';

const artifacts = join(dirname(fileURLToPath(import.meta.url)), 'artifacts');

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** Run `fn(server, rest)` with a fresh server, always stopping it. */
async function withServer(fn, opts) {
  const server = await startServer(opts);
  try {
    await fn(server, restClient(server.url));
  } catch (e) {
    e.message += `\n--- server log (tail) ---\n${server.log.slice(-4000)}`;
    throw e;
  } finally {
    await server.dispose();
  }
}

const state = (page) =>
  page.evaluate(() => {
    const c = window.collab && window.collab.client;
    const v = window.collab && window.collab.view;
    return c && { status: c.status, pending: c.pending, rev: c.rev, content: c.content, clientId: c.clientId, editor: v ? v.state.doc.toString() : null };
  });

async function openEditor(context, base, id, fragment = '') {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${base}/d/${id}${fragment}`);
  await waitFor(async () => {
    const s = await state(page);
    return s && s.status === 'connected' && s.editor !== null;
  }, { what: 'the editor to connect' });
  await waitFor(async () => (await page.locator('.status').textContent()) === 'connected', { what: 'status "connected"' });
  return { page, errors };
}

/** Both pages idle, equal to each other and to the server's content. */
async function converged(rest, id, pages) {
  let last;
  await waitFor(
    async () => {
      const doc = (await rest('GET', `/api/documents/${id}`)).body;
      const states = await Promise.all(pages.map(state));
      last = { server: doc.content, rev: doc.rev, states };
      return states.every((s) => s.status === 'connected' && s.pending === 0 && s.rev === doc.rev && s.content === doc.content && s.editor === doc.content);
    },
    { timeout: 15000, what: 'convergence' },
  ).catch((e) => {
    e.message += '\n' + JSON.stringify(last, null, 1);
    throw e;
  });
  return last.server;
}

const count = (s, part) => s.split(part).length - 1;
const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);

/** This page's own selection and the peers' selections it shows, in code points. */
const selections = (page) =>
  page.evaluate(() => {
    const { client, view } = window.collab;
    const sel = view.state.selection.main;
    const cp = (pos) => [...view.state.doc.sliceString(0, pos)].length;
    const peers = {};
    for (const [id, p] of client.peers) peers[id] = p.selection;
    return { me: client.clientId, own: [cp(sel.anchor), cp(sel.head)], peers };
  });

test('the document list creates, opens, renames and deletes', async () => {
  await withServer(async (server, rest) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = watchErrors(page);
    await page.goto(server.url + '/');
    await page.locator('.empty').waitFor();

    // Create: opens the editor.
    await page.fill('form.create input', 'Shopping list 🛒');
    await page.click('form.create button');
    await page.waitForURL(/\/d\/[^/]+$/);
    const id = decodeURIComponent(new URL(page.url()).pathname.split('/')[2]);
    const created = await rest('GET', `/api/documents/${id}`);
    assert.equal(created.status, 200);
    assert.equal(created.body.title, 'Shopping list 🛒');
    await page.locator('.doc-title', { hasText: 'Shopping list 🛒' }).waitFor();

    // Back on the list: title, revision, time.
    await page.goto(server.url + '/');
    const row = page.locator(`tr[data-id="${id}"]`);
    await row.waitFor();
    assert.equal(await row.locator('a.title').textContent(), 'Shopping list 🛒');
    assert.equal(await row.locator('.rev').textContent(), '0');
    assert.equal(await row.locator('.time').textContent(), 'just now');

    // Rename, including a refused title.
    await row.getByRole('button', { name: 'Rename' }).click();
    await row.locator('form.rename input').fill('   ');
    await row.locator('form.rename input').press('Enter');
    await page.locator('p.error', { hasText: '1 to 200 characters' }).waitFor();
    await row.locator('form.rename input').fill('Groceries');
    await row.locator('form.rename input').press('Enter');
    await row.locator('a.title', { hasText: 'Groceries' }).waitFor();
    await waitFor(async () => (await rest('GET', `/api/documents/${id}`)).body.title === 'Groceries', { what: 'the rename' });
    await page.reload();
    await row.locator('a.title', { hasText: 'Groceries' }).waitFor();

    // Open from the list.
    await row.locator('a.title').click();
    await page.waitForURL(`${server.url}/d/${id}`);
    await page.goBack();
    await row.waitFor();

    // Delete (confirmed).
    page.once('dialog', (d) => d.accept());
    await row.getByRole('button', { name: 'Delete' }).click();
    await row.waitFor({ state: 'detached' });
    await waitFor(async () => (await rest('GET', `/api/documents/${id}`)).status === 404, { what: 'the delete' });
    await page.locator('.empty').waitFor();
    assert.deepEqual(errors, []);
    await context.close();
  });
});

test('two pages edit at once, with emoji, converge with the server, and show each other', async () => {
  await withServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Two pages', content: 'Hello 😭 world\nsecond line\n' })).body;
    const ann = await newUser(browser, 'Ann', '#e6194b');
    const bob = await newUser(browser, 'Bob', '#4363d8');
    const a = await openEditor(ann, server.url, doc.id);
    const b = await openEditor(bob, server.url, doc.id);

    // Ann types at the end, Bob right after the 😭 (cursor moves over it as one
    // character), both at the same time and with emoji.
    await a.page.click('.cm-content');
    await a.page.keyboard.press('Control+End');
    await b.page.click('.cm-content');
    await b.page.keyboard.press('Control+Home');
    for (let i = 0; i < 7; i++) await b.page.keyboard.press('ArrowRight');
    await Promise.all([
      a.page.keyboard.type('Ann was here 🎉 ok', { delay: 15 }),
      b.page.keyboard.type(' (Bob 👍🏽)', { delay: 20 }),
    ]);
    // A second simultaneous round, editing the same line.
    await a.page.keyboard.press('Control+Home');
    await Promise.all([
      a.page.keyboard.type('>> ', { delay: 10 }),
      b.page.keyboard.press('Backspace').then(() => b.page.keyboard.type('!🧪', { delay: 10 })),
    ]);

    const content = await converged(rest, doc.id, [a.page, b.page]);
    assert.equal(count(content, 'Ann was here 🎉 ok'), 1, content);
    assert.equal(count(content, '(Bob 👍🏽!🧪'), 1, content);
    assert.equal(count(content, '>> '), 1, content);
    assert.ok(content.startsWith('>> Hello 😭 (Bob 👍🏽!🧪'), content);

    // Ann selects a word: Bob sees her cursor, her name and the selection.
    await a.page.keyboard.press('Control+End');
    await a.page.keyboard.press('Shift+ArrowLeft');
    await a.page.keyboard.press('Shift+ArrowLeft');
    await b.page.locator('.cm-peer-label', { hasText: 'Ann' }).waitFor();
    await b.page.locator('.cm-peer-selection').waitFor();
    await b.page.locator('.people li', { hasText: 'Ann' }).waitFor();
    await a.page.locator('.people li', { hasText: 'Bob' }).waitFor();
    await a.page.locator('.cm-peer-label', { hasText: 'Bob' }).waitFor();

    // Rename yourself: the other page follows.
    await b.page.fill('input.name', 'Bobby');
    await b.page.press('input.name', 'Enter');
    await b.page.click('.cm-content');
    await a.page.locator('.cm-peer-label', { hasText: 'Bobby' }).waitFor();
    await a.page.locator('.people li', { hasText: 'Bobby' }).waitFor();
    await b.page.keyboard.press('End');
    await b.page.keyboard.type(' ✓');
    await converged(rest, doc.id, [a.page, b.page]);
    await a.page.locator('.cm-peer-label', { hasText: 'Bobby' }).waitFor();
    await b.page.locator('.cm-peer-label', { hasText: 'Ann' }).waitFor();
    // Each page shows the other's cursor where it really is.
    await waitFor(async () => {
      const [sa, sb] = await Promise.all([a.page, b.page].map(selections));
      return same(sa.peers[sb.me], sb.own) && same(sb.peers[sa.me], sa.own);
    }, { what: 'remote selections to match the real ones' });

    await saveSideBySide([a.page, b.page], join(artifacts, 'two-pages.png'));
    assert.deepEqual([...a.errors, ...b.errors], []);
    await ann.close();
    await bob.close();
  });
});

test('a page goes offline, edits, comes back, and its edits land exactly once', async () => {
  await withServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Offline', content: 'base\n' })).body;
    const ann = await newUser(browser, 'Ann', '#3cb44b');
    const bob = await newUser(browser, 'Bob', '#911eb4');
    const a = await openEditor(ann, server.url, doc.id);
    const b = await openEditor(bob, server.url, doc.id);
    const annId = (await state(a.page)).clientId;
    await b.page.locator(`.people li[data-client="${annId}"]`).waitFor();

    // Some synced edits first, so there is history to resume from.
    await a.page.click('.cm-content');
    await a.page.keyboard.press('Control+End');
    await a.page.keyboard.type('online 1. ');
    await converged(rest, doc.id, [a.page, b.page]);

    // Offline: the socket is closed and no reconnect is tried.
    await a.page.evaluate(() => window.collab.client.goOffline());
    await a.page.locator('.status', { hasText: 'offline — 0 unsynced edits' }).waitFor();
    // The server saw Ann go: Bob's list drops her.
    await b.page.locator(`.people li[data-client="${annId}"]`).waitFor({ state: 'detached' });

    await a.page.keyboard.type('offline 😀 edit');
    const pending = (await state(a.page)).pending;
    assert.equal(pending, 'offline 😀 edit'.length - 1, 'one edit per keystroke (😀 is one)');
    await a.page.locator('.status', { hasText: `offline — ${pending} unsynced edits` }).waitFor();
    // Meanwhile Bob edits at the start.
    await b.page.click('.cm-content');
    await b.page.keyboard.press('Control+Home');
    await b.page.keyboard.type('Bob: ');
    await waitFor(async () => (await state(b.page)).pending === 0, { what: "Bob's ack" });
    const mid = (await rest('GET', `/api/documents/${doc.id}`)).body.content;
    assert.equal(count(mid, 'offline'), 0, 'nothing reached the server while offline');
    assert.equal((await state(a.page)).editor.includes('Bob'), false, 'nothing reached the page while offline');

    // Closing the tab now would warn.
    const warns = await a.page.evaluate(() => {
      const e = new Event('beforeunload', { cancelable: true });
      window.dispatchEvent(e);
      return e.defaultPrevented;
    });
    assert.equal(warns, true);

    // Back online: the queue goes out once, Bob's edit comes in.
    await a.page.evaluate(() => window.collab.client.goOnline());
    const content = await converged(rest, doc.id, [a.page, b.page]);
    assert.equal(content, 'Bob: base\nonline 1. offline 😀 edit');
    await a.page.locator('.status', { hasText: /^connected$/ }).waitFor();

    // The ops listing: Ann's seqs strictly increase, none twice, and the
    // offline text was committed in one op.
    const ops = (await rest('GET', `/api/documents/${doc.id}/ops?since=0&limit=1000`)).body.ops;
    const annSeqs = ops.filter((o) => o.client_id === annId).map((o) => o.seq);
    assert.ok(annSeqs.length > 0);
    for (let i = 1; i < annSeqs.length; i++) assert.ok(annSeqs[i] > annSeqs[i - 1], JSON.stringify(annSeqs));
    const withOffline = ops.filter((o) => JSON.stringify(o.op).includes('offline 😀 edit'));
    assert.equal(withOffline.length, 1, JSON.stringify(ops));
    assert.equal(withOffline[0].client_id, annId);

    const nowarn = await a.page.evaluate(() => {
      const e = new Event('beforeunload', { cancelable: true });
      window.dispatchEvent(e);
      return e.defaultPrevented;
    });
    assert.equal(nowarn, false, 'no warning once everything is synced');
    assert.deepEqual([...a.errors, ...b.errors], []);
    await ann.close();
    await bob.close();
  });
});

test('edits survive the server being killed and restarted, exactly once', async () => {
  await withServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Crash', content: '' })).body;
    const ann = await newUser(browser, 'Ann', '#f58231');
    const bob = await newUser(browser, 'Bob', '#008080');
    const a = await openEditor(ann, server.url, doc.id);
    const b = await openEditor(bob, server.url, doc.id);
    await a.page.click('.cm-content');

    const first = 'abcdefghijklmnopqrstuvwxyz';
    const second = '0123456789😀ABCDEFGHIJ';
    const typing = a.page.keyboard.type(first, { delay: 25 });
    await waitFor(async () => (await rest('GET', `/api/documents/${doc.id}`)).body.rev >= 5, { what: 'some edits stored' });
    await server.kill();
    await typing;
    await a.page.locator('.status', { hasText: /reconnecting|offline/ }).waitFor();
    await a.page.keyboard.type(second, { delay: 5 });
    await server.restart();

    const content = await converged(rest, doc.id, [a.page, b.page]);
    assert.equal(content, first + second);
    const ops = (await rest('GET', `/api/documents/${doc.id}/ops?since=0&limit=1000`)).body.ops;
    const keys = ops.map((o) => `${o.client_id}:${o.seq}`);
    assert.equal(new Set(keys).size, keys.length, 'no (client_id, seq) twice');
    assert.deepEqual(a.errors, []);
    await ann.close();
    await bob.close();
  });
});

test('a deleted document is reported in plain words and the editor stops', async () => {
  await withServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Doomed', content: 'bye' })).body;
    const ctx = await newUser(browser, 'Ann', '#9a6324');
    const a = await openEditor(ctx, server.url, doc.id);
    assert.equal((await rest('DELETE', `/api/documents/${doc.id}`)).status, 204);
    await a.page.locator('.banner', { hasText: 'This document has been deleted.' }).waitFor();
    await waitFor(async () => (await a.page.locator('.cm-content').getAttribute('contenteditable')) === 'false', { what: 'read-only editor' });

    const missing = await ctx.newPage();
    await missing.goto(`${server.url}/d/no-such-doc`);
    await missing.locator('.banner', { hasText: 'does not exist' }).waitFor();
    await ctx.close();
  });
});

/** Screenshot each page and save them side by side in one PNG. */
async function saveSideBySide(pages, file) {
  const shots = await Promise.all(pages.map((p) => p.screenshot()));
  await mkdir(dirname(file), { recursive: true });
  const ctx = await browser.newContext({ viewport: { width: 1816, height: 576 } });
  const page = await ctx.newPage();
  const imgs = shots.map((s) => `<img src="data:image/png;base64,${s.toString('base64')}">`).join('');
  await page.setContent(
    `<body style="margin:0;background:#99a;display:flex;gap:16px;padding:8px">${imgs}</body>`,
  );
  await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0));
  await writeFile(file, await page.screenshot({ fullPage: true }));
  await ctx.close();
}

// ---- access control (token mode) ---------------------------------------------------

const SECRET = 'web-test-secret-0123456789abcdef-0123456789';
const nowSecs = () => Math.floor(Date.now() / 1000);
const token = (claims) => mintToken(SECRET, { exp: nowSecs() + 3600, iat: nowSecs(), ...claims });
const tokenMode = { env: { COLLAB_AUTH_SECRET: SECRET } };

/** Run `fn(server, adminRest, adminToken)` against a server in token mode. */
function withTokenServer(fn) {
  return withServer(async (server) => {
    const adminToken = token({ sub: 'owner', name: 'Owner', docs: { '*': 'admin' } });
    await fn(server, restClient(server.url, adminToken), adminToken);
  }, tokenMode);
}

const editable = (page) => page.locator('.cm-content').getAttribute('contenteditable');

test('open mode: no read-only badge, no Share, role admin', async () => {
  await withServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Open', content: 'x' })).body;
    const ctx = await newUser(browser, 'Ann', '#e6194b');
    const a = await openEditor(ctx, server.url, doc.id);
    assert.deepEqual(await a.page.evaluate(() => [window.collab.client.role, window.collab.client.exp]), ['admin', null]);
    assert.equal(await a.page.locator('.readonly-badge').isVisible(), false);
    assert.equal(await a.page.locator('button.share').isVisible(), false);
    assert.equal(await editable(a.page), 'true');
    assert.deepEqual(a.errors, []);
    await ctx.close();
  });
});

test('token mode: a read link shows the badge, cannot type, and leaves no token in the address', async () => {
  await withTokenServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Read me', content: 'original text\n' })).body;
    const link = await rest('POST', `/api/documents/${doc.id}/links`, { role: 'read', ttl_secs: 3600 });
    assert.equal(link.status, 201, JSON.stringify(link.body));
    assert.match(link.body.url, new RegExp(`^/d/${doc.id}#token=`));

    const reader = await newUser(browser, 'Rita', '#4363d8');
    const r = await openEditor(reader, server.url, doc.id, link.body.url.slice(link.body.url.indexOf('#')));
    // The fragment is gone from the address bar and from this entry of the history.
    const where = await r.page.evaluate(() => ({ href: location.href, hash: location.hash, stored: !!sessionStorage.getItem('collab:token') }));
    assert.equal(where.href, `${server.url}/d/${doc.id}`);
    assert.equal(where.hash, '');
    assert.equal(where.stored, true);
    assert.ok(!r.page.url().includes('token'), r.page.url());

    await r.page.locator('.readonly-badge', { hasText: 'Read only' }).waitFor({ state: 'visible' });
    assert.equal(await r.page.locator('button.share').isVisible(), false);
    assert.equal(await r.page.evaluate(() => window.collab.client.role), 'read');
    assert.equal(await editable(r.page), 'false');

    // Typing changes nothing, here or on the server.
    await r.page.click('.cm-content');
    await r.page.keyboard.press('Control+End');
    await r.page.keyboard.type('hacked', { delay: 10 });
    await r.page.keyboard.press('Backspace');
    const refused = await r.page.evaluate(() => {
      try {
        window.collab.client.submitOp(['x']);
        return 'accepted';
      } catch (e) {
        return e.code;
      }
    });
    assert.equal(refused, 'read_only');
    await new Promise((res) => setTimeout(res, 500));
    const after = (await rest('GET', `/api/documents/${doc.id}`)).body;
    assert.equal(after.content, 'original text\n');
    assert.equal(after.rev, 0);
    const s = await state(r.page);
    assert.equal(s.editor, 'original text\n');
    assert.equal(s.content, 'original text\n');
    assert.equal(s.pending, 0);

    // A writer's edits still arrive.
    const writer = await newUser(browser, 'Walt', '#3cb44b');
    const w = await openEditor(writer, server.url, doc.id, '#token=' + token({ sub: 'walt', docs: { [doc.id]: 'write' } }));
    assert.equal(await w.page.locator('.readonly-badge').isVisible(), false);
    await w.page.click('.cm-content');
    await w.page.keyboard.press('Control+End');
    await w.page.keyboard.type('from Walt');
    await converged(rest, doc.id, [r.page, w.page]);
    assert.equal((await state(r.page)).editor, 'original text\nfrom Walt');

    // A reload keeps working (the token is kept for this tab), still read only.
    await r.page.reload();
    await waitFor(async () => (await state(r.page))?.status === 'connected' && (await state(r.page)).editor !== null, { what: 'reconnect after reload' });
    await r.page.locator('.readonly-badge').waitFor({ state: 'visible' });
    assert.equal(await editable(r.page), 'false');
    assert.deepEqual([...r.errors, ...w.errors], []);
    await reader.close();
    await writer.close();
  });
});

test('token mode: revoking the user ends the page with "Access revoked"', async () => {
  await withTokenServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Revoke', content: 'abc' })).body;
    const ctx = await newUser(browser, 'Ann', '#f58231');
    const ann = token({ sub: 'ann', jti: 'ann-1', docs: { [doc.id]: 'write' } });
    const a = await openEditor(ctx, server.url, doc.id, '#token=' + ann);
    assert.equal(await editable(a.page), 'true');
    await a.page.click('.cm-content');
    await a.page.keyboard.type('ok ');
    await converged(rest, doc.id, [a.page]);

    const revoked = await rest('POST', '/api/auth/revocations', { sub: 'ann' });
    assert.equal(revoked.status, 204, JSON.stringify(revoked.body));
    await a.page.locator('.banner', { hasText: 'Access revoked' }).waitFor({ timeout: 5000 });
    await waitFor(async () => (await editable(a.page)) === 'false', { what: 'read-only editor' });
    assert.equal(await a.page.locator('.status').textContent(), 'signed out');
    const detail = await a.page.evaluate(() => window.collab.client.status);
    assert.equal(detail, 'unauthorized');

    // The same tab, reloaded: still refused, in the same words, and the list says so too.
    await a.page.reload();
    await a.page.locator('.banner', { hasText: /revoked/ }).waitFor();
    await a.page.goto(server.url + '/');
    await a.page.locator('p.error', { hasText: /revoked/ }).waitFor();
    assert.equal(await a.page.locator('form.create').isVisible(), false);
    assert.deepEqual(a.errors, []);
    await ctx.close();
  });
});

test('token mode: expired links, missing tokens and foreign documents are refused in plain words', async () => {
  await withTokenServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Private', content: 'secret' })).body;
    const ctx = await browser.newContext();

    const expired = await ctx.newPage();
    const old = mintToken(SECRET, { sub: 'late', iat: nowSecs() - 7200, exp: nowSecs() - 3600, docs: { [doc.id]: 'read' } });
    await expired.goto(`${server.url}/d/${doc.id}#token=${old}`);
    await expired.locator('.banner', { hasText: 'This link has expired' }).waitFor();
    assert.equal(await expired.evaluate(() => window.collab.client.status), 'unauthorized');
    assert.equal(await expired.evaluate(() => location.hash), '');

    const other = await ctx.newPage();
    await other.goto(`${server.url}/d/${doc.id}#token=${token({ sub: 'eve', docs: { 'elsewhere-*': 'admin' } })}`);
    await other.locator('.banner', { hasText: 'You do not have access to this document' }).waitFor();
    assert.equal(await other.evaluate(() => window.collab.client.status), 'forbidden');

    const anon = await browser.newContext();
    const list = await anon.newPage();
    await list.goto(server.url + '/');
    await list.locator('p.error', { hasText: /not signed in/ }).waitFor();
    assert.equal(await list.locator('form.create').isVisible(), false);
    const page = await anon.newPage();
    await page.goto(`${server.url}/d/${doc.id}`);
    await page.locator('.banner', { hasText: /not signed in/ }).waitFor();
    assert.equal((await rest('GET', `/api/documents/${doc.id}`)).body.content, 'secret');
    await ctx.close();
    await anon.close();
  });
});

test('token mode: the document list shows only what the token may read', async () => {
  await withTokenServer(async (server, rest) => {
    for (const id of ['team-a-1', 'team-a-2', 'team-b-1']) {
      assert.equal((await rest('POST', '/api/documents', { id, title: `Doc ${id}` })).status, 201);
    }
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const errors = watchErrors(page);
    await page.goto(`${server.url}/#token=${token({ sub: 'ann', docs: { 'team-a-*': 'read', 'team-a-2': 'admin' } })}`);
    await page.locator('tr[data-id="team-a-1"]').waitFor();
    await page.locator('tr[data-id="team-a-2"]').waitFor();
    assert.equal(await page.locator('tbody tr').count(), 2);
    assert.equal(await page.evaluate(() => location.href), server.url + '/');
    assert.equal(await page.locator('form.create').isVisible(), false, 'no admin on *');
    assert.equal(await page.locator('tr[data-id="team-a-1"] button').count(), 0, 'read only: no rename or delete');
    assert.equal(await page.locator('tr[data-id="team-a-2"] button', { hasText: 'Rename' }).count(), 1);

    // The links carry no token; the tab keeps it.
    await page.locator('tr[data-id="team-a-1"] a.title').click();
    await page.waitForURL(`${server.url}/d/team-a-1`);
    await page.locator('.readonly-badge').waitFor({ state: 'visible' });
    assert.deepEqual(errors, []);
    await ctx.close();
  });
});

test('token mode: an admin shares a read link that opens read only in another page, and a write link', async () => {
  await withTokenServer(async (server, rest, adminToken) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Shared', content: 'hello\n' })).body;
    const ownerCtx = await newUser(browser, 'Olga', '#911eb4');
    const o = await openEditor(ownerCtx, server.url, doc.id, '#token=' + adminToken);
    assert.equal(await o.page.evaluate(() => window.collab.client.role), 'admin');
    await o.page.locator('button.share').click();
    await o.page.locator('.share-panel').waitFor({ state: 'visible' });

    const makeLink = async (role) => {
      await o.page.selectOption('.share-role', role);
      const before = await o.page.locator('.share-url').inputValue();
      await o.page.locator('button.create-link').click();
      await waitFor(async () => {
        const v = await o.page.locator('.share-url').inputValue();
        return v && v !== before && (await o.page.locator('.share-url').isVisible());
      }, { what: `a ${role} link` });
      return o.page.locator('.share-url').inputValue();
    };

    const readUrl = await makeLink('read');
    assert.ok(readUrl.startsWith(`${server.url}/d/${doc.id}#token=`), readUrl);
    await o.page.locator('button.copy').click();
    await o.page.locator('button.copy', { hasText: /Copied|Ctrl\+C/ }).waitFor();

    const guestCtx = await newUser(browser, 'Gus', '#008080');
    const g = await guestCtx.newPage();
    const gErrors = watchErrors(g);
    await g.goto(readUrl);
    await waitFor(async () => (await state(g))?.status === 'connected' && (await state(g)).editor !== null, { what: 'the guest to connect' });
    await g.locator('.readonly-badge', { hasText: 'Read only' }).waitFor({ state: 'visible' });
    assert.equal(await g.locator('button.share').isVisible(), false);
    assert.equal(await editable(g), 'false');
    await g.click('.cm-content');
    await g.keyboard.type('guest was here');
    await o.page.click('.cm-content');
    await o.page.keyboard.press('Control+End');
    await o.page.keyboard.type('owner edit');
    await converged(rest, doc.id, [o.page, g]);
    assert.equal((await rest('GET', `/api/documents/${doc.id}`)).body.content, 'hello\nowner edit');

    // A write link: the next guest can edit.
    const writeUrl = await makeLink('write');
    const editorCtx = await newUser(browser, 'Eda', '#42a5a5');
    const e = await editorCtx.newPage();
    const eErrors = watchErrors(e);
    await e.goto(writeUrl);
    await waitFor(async () => (await state(e))?.status === 'connected' && (await state(e)).editor !== null, { what: 'the editor guest to connect' });
    assert.equal(await e.locator('.readonly-badge').isVisible(), false);
    await e.click('.cm-content');
    await e.keyboard.press('Control+Home');
    await e.keyboard.type('Eda: ');
    const content = await converged(rest, doc.id, [o.page, g, e]);
    assert.equal(content, 'Eda: hello\nowner edit');
    const ops = (await rest('GET', `/api/documents/${doc.id}/ops?since=0&limit=100`)).body.ops;
    assert.ok(ops.length >= 2);
    assert.deepEqual([...o.errors, ...gErrors, ...eErrors], []);
    await ownerCtx.close();
    await guestCtx.close();
    await editorCtx.close();
  });
});

test('token mode: a refreshed token with less access makes the editor read only at once', async () => {
  await withTokenServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Downgrade', content: '' })).body;
    const ctx = await newUser(browser, 'Ann', '#c2185b');
    const a = await openEditor(ctx, server.url, doc.id, '#token=' + token({ sub: 'ann', docs: { [doc.id]: 'write' } }));
    await a.page.click('.cm-content');
    await a.page.keyboard.type('before ');
    await converged(rest, doc.id, [a.page]);

    // What a page's refreshToken callback would do, with a read-only token for the same user.
    const readToken = token({ sub: 'ann', docs: { [doc.id]: 'read' } });
    await a.page.evaluate((t) => window.collab.client.setToken(t), readToken);
    await a.page.locator('.readonly-badge').waitFor({ state: 'visible' });
    await waitFor(async () => (await editable(a.page)) === 'false', { what: 'read-only editor' });
    await a.page.keyboard.type('after');
    await new Promise((res) => setTimeout(res, 300));
    assert.equal((await rest('GET', `/api/documents/${doc.id}`)).body.content, 'before ');
    assert.equal((await state(a.page)).editor, 'before ');

    // And back to write.
    await a.page.evaluate((t) => window.collab.client.setToken(t), token({ sub: 'ann', docs: { [doc.id]: 'write' } }));
    await a.page.locator('.readonly-badge').waitFor({ state: 'hidden' });
    await waitFor(async () => (await editable(a.page)) === 'true', { what: 'editable again' });
    await a.page.click('.cm-content');
    await a.page.keyboard.press('Control+End');
    await a.page.keyboard.type('again');
    assert.equal(await converged(rest, doc.id, [a.page]), 'before again');
    assert.deepEqual(a.errors, []);
    await ctx.close();
  });
});

test('token mode, the library against the real server: refresh before exp, expiry without it, a refused op after a downgrade', async () => {
  const env = { COLLAB_AUTH_SECRET: SECRET, COLLAB_AUTH_LEEWAY_SECS: '0' };
  await withServer(async (server) => {
    const rest = restClient(server.url, token({ sub: 'owner', docs: { '*': 'admin' } }));
    const doc = (await rest('POST', '/api/documents', { title: 'Library', content: 'abc' })).body;
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const errors = watchErrors(page);
    const minted = [];
    // The page's "backend": mints a token for `sub` with `role` on the document.
    await page.exposeFunction('mint', (sub, role, ttl) => {
      minted.push({ sub, role, ttl });
      return mintToken(SECRET, { sub, iat: nowSecs(), exp: nowSecs() + ttl, docs: { [doc.id]: role } });
    });
    await page.goto(server.url + '/assets/collab-client.js');
    const result = await page.evaluate(async (id) => {
      const { CollabClient } = await import('/assets/collab-client.js');
      const wait = async (cond, what, ms = 10000) => {
        const end = Date.now() + ms;
        while (!cond()) {
          if (Date.now() > end) throw new Error('timed out: ' + what);
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      const log = (c) => {
        const seen = [];
        for (const name of ['error', 'auth']) c.addEventListener(name, (e) => seen.push({ name, ...e.detail }));
        return seen;
      };
      const opts = { docId: id, storage: null };
      // Short tokens: one refreshed before exp, one not.
      const fresh = new CollabClient({ ...opts, token: await window.mint('ann', 'write', 4), refreshToken: () => window.mint('ann', 'write', 3600) });
      const stale = new CollabClient({ ...opts, token: await window.mint('bob', 'write', 4) });
      const freshLog = log(fresh);
      const staleLog = log(stale);
      await wait(() => fresh.content !== null && stale.content !== null, 'welcomes');
      const firstExp = fresh.exp;
      const startRole = fresh.role;
      await wait(() => stale.status === 'unauthorized', 'the stale session to end', 12000);
      await wait(() => fresh.exp > firstExp + 60, 'the refresh');
      fresh.submitOp([3, '!']);
      await wait(() => fresh.pending === 0, 'an ack after the refresh');

      // A downgrade whose reply has not come back yet: the op sent right after is refused.
      const carl = new CollabClient({ ...opts, token: await window.mint('carl', 'write', 3600) });
      const carlLog = log(carl);
      await wait(() => carl.content !== null && carl.rev === fresh.rev, 'carl');
      carl.setToken(await window.mint('carl', 'read', 3600));
      carl.submitOp(['refused ']);
      await wait(() => carl.role === 'read' && carl.pending === 0 && carl.status === 'connected' && carl.content === fresh.content, 'the resync');
      const readOnlyCode = (() => {
        try {
          carl.submitOp(['x']);
        } catch (e) {
          return e.code;
        }
      })();
      // Still connected and still receiving.
      fresh.submitOp(['>']);
      await wait(() => carl.content === fresh.content && fresh.pending === 0, 'a remote edit after the downgrade');
      const out = {
        startRole,
        firstExp,
        freshExp: fresh.exp,
        freshStatus: fresh.status,
        freshContent: fresh.content,
        staleStatus: stale.status,
        staleErrors: staleLog.filter((e) => e.name === 'error'),
        freshErrors: freshLog.filter((e) => e.name === 'error'),
        carlErrors: carlLog.filter((e) => e.name === 'error'),
        carlRole: carl.role,
        carlStatus: carl.status,
        carlContent: carl.content,
        readOnlyCode,
      };
      fresh.close();
      carl.close();
      return out;
    }, doc.id);

    assert.equal(result.startRole, 'write');
    assert.ok(result.firstExp <= nowSecs() + 4, JSON.stringify(result));
    assert.equal(result.freshStatus, 'connected');
    assert.deepEqual(result.freshErrors, []);
    assert.equal(result.staleStatus, 'unauthorized');
    assert.equal(result.staleErrors.length, 1, JSON.stringify(result.staleErrors));
    assert.equal(result.staleErrors[0].reason, 'expired');
    assert.match(result.staleErrors[0].message, /token expired/);
    assert.ok(minted.some((m) => m.sub === 'ann' && m.ttl === 3600), 'refreshToken was called');
    assert.ok(result.carlErrors.some((e) => e.code === 'forbidden' && !e.fatal), JSON.stringify(result.carlErrors));
    assert.equal(result.carlRole, 'read');
    assert.equal(result.readOnlyCode, 'read_only');
    const server_ = (await rest('GET', `/api/documents/${doc.id}`)).body;
    assert.equal(server_.content, '>abc!');
    assert.equal(result.carlContent, '>abc!');
    assert.ok(!server_.content.includes('refused'));
    const ops = (await rest('GET', `/api/documents/${doc.id}/ops?since=0&limit=100`)).body.ops;
    assert.deepEqual(ops.map((o) => o.author), ['ann', 'ann']);
    assert.deepEqual(errors, []);
    await ctx.close();
  }, { env });
});

test('token mode: a second link for the same document in the same tab (another user) gets its own client id', async () => {
  await withTokenServer(async (server, rest) => {
    const doc = (await rest('POST', '/api/documents', { title: 'Two links', content: '' })).body;
    const first = (await rest('POST', `/api/documents/${doc.id}/links`, { role: 'write', ttl_secs: 3600 })).body;
    const second = (await rest('POST', `/api/documents/${doc.id}/links`, { role: 'write', ttl_secs: 3600 })).body;
    const ctx = await newUser(browser, 'Tab', '#9a6324');
    const a = await openEditor(ctx, server.url, doc.id, first.url.slice(first.url.indexOf('#')));
    await a.page.click('.cm-content');
    await a.page.keyboard.type('one ');
    await converged(rest, doc.id, [a.page]);
    const firstId = (await state(a.page)).clientId;

    // The same tab follows the second link (only the fragment differs, so the
    // page takes the token and loads again): another user (link:<jti>), so
    // another client id.
    await a.page.evaluate(() => (window.oldPage = true));
    await a.page.goto(server.url + second.url);
    await waitFor(
      async () => !(await a.page.evaluate(() => window.oldPage)) && (await state(a.page))?.status === 'connected' && (await state(a.page)).editor !== null,
      { what: 'the second link to connect' },
    );
    assert.equal(await a.page.evaluate(() => location.href), `${server.url}/d/${doc.id}`);
    const secondId = (await state(a.page)).clientId;
    assert.notEqual(secondId, firstId);
    await a.page.click('.cm-content');
    await a.page.keyboard.press('Control+End');
    await a.page.keyboard.type('two');
    assert.equal(await converged(rest, doc.id, [a.page]), 'one two');
    const ops = (await rest('GET', `/api/documents/${doc.id}/ops?since=0&limit=100`)).body.ops;
    assert.deepEqual([...new Set(ops.map((o) => o.author))], [`link:${first.jti}`, `link:${second.jti}`]);
    assert.deepEqual(a.errors, []);
    await ctx.close();
  });
});
