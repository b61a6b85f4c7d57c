// Test harness: the real `collab` binary on a free port with a fresh SQLite
// file, and headless Chromium (Debian's) driven by playwright-core.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const COLLAB_BIN = resolve(here, '..', process.env.COLLAB_BIN || '../target/debug/collab');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Poll `fn` until it returns a truthy value (returned) or time runs out. */
export async function waitFor(fn, { timeout = 10000, interval = 25, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Start `collab serve` on 127.0.0.1 with a fresh database. `port` 0 picks a
 * free port (read from the "listening" log line); `env` adds environment
 * variables (e.g. `{COLLAB_AUTH_SECRET: '…'}` for token mode). Returns {url,
 * port, stop, restart, kill}.
 */
export async function startServer({ port = 0, dir = null, env = {} } = {}) {
  try {
    await access(COLLAB_BIN, constants.X_OK);
  } catch {
    throw new Error(`no collab binary at ${COLLAB_BIN}: run \`cargo build -p collab-server\` or set COLLAB_BIN`);
  }
  const workDir = dir || (await mkdtemp(join(tmpdir(), 'collab-web-test-')));
  const ownsDir = !dir;
  const db = `sqlite://${join(workDir, 'collab.db')}`;
  let proc = null;
  let log = '';

  async function launch(bindPort) {
    log = '';
    proc = spawn(COLLAB_BIN, ['serve', '--bind', `127.0.0.1:${bindPort}`, '--database-url', db, '--log-format', 'json', '--log', 'info'], {
      cwd: workDir, // no stray .env
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((r) => {
      proc.once('exit', (code, sig) => r({ code, sig }));
      proc.once('error', (e) => r({ code: String(e), sig: null }));
    });
    proc.exited = exited;
    let addr = null;
    const onData = (buf) => {
      log += buf.toString();
      if (log.length > 200000) log = log.slice(-100000);
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    const found = await Promise.race([
      waitFor(
        () => {
          for (const line of log.split('\n')) {
            if (!line.includes('listening')) continue;
            const m = line.match(/127\.0\.0\.1:(\d+)/);
            if (m) return (addr = Number(m[1]));
          }
          return null;
        },
        { timeout: 20000, what: 'the server to listen' },
      ),
      exited.then(({ code, sig }) => {
        throw new Error(`collab exited early (${code ?? sig}):\n${log}`);
      }),
    ]);
    const url = `http://127.0.0.1:${found ?? addr}`;
    await waitFor(
      async () => {
        const res = await fetch(url + '/health');
        return res.status === 200;
      },
      { timeout: 20000, what: '/health' },
    );
    return found;
  }

  const actual = await launch(port);
  const server = {
    port: actual,
    url: `http://127.0.0.1:${actual}`,
    get log() {
      return log;
    },
    /** Stop gracefully (SIGTERM) and wait. */
    async stop() {
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
      await proc.exited;
      clearTimeout(t);
    },
    /** Kill at once (SIGKILL), as a crash would. */
    async kill() {
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGKILL');
      await proc.exited;
    },
    /** Start again on the same port and database. */
    async restart() {
      await waitFor(async () => (await launch(actual)) === actual, { timeout: 20000, what: 'restart on the same port' });
    },
    async dispose() {
      await server.stop();
      if (ownsDir) await rm(workDir, { recursive: true, force: true });
    },
  };
  return server;
}

/**
 * An HS256 JWT, as an application backend would mint one for collab:
 * base64url(header) "." base64url(claims) "." base64url(HMAC-SHA256(secret, the two)).
 */
export function mintToken(secret, claims) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

/** REST helper against a started server; with `token`, sent as `Authorization: Bearer`. */
export function restClient(base, token = null) {
  return async function rest(method, path, body) {
    const headers = body === undefined ? {} : { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A browser context whose pages use the given name and colour. */
export async function newUser(browser, name, color) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  await context.addInitScript(
    ([n, c]) => {
      if (!localStorage.getItem('collab:user')) localStorage.setItem('collab:user', JSON.stringify({ name: n, color: c }));
    },
    [name, color],
  );
  return context;
}

/** Collect uncaught page exceptions so a test can assert there were none. */
export function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  return errors;
}
