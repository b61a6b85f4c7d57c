// Builds the page and the client library into crates/collab-server/assets/,
// which the server embeds. The output is deterministic: same sources and
// same lockfile, same bytes.
//
//   node build.mjs          build
//   node build.mjs --check  build in memory and fail if the committed files differ

import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, '..', 'crates', 'collab-server', 'assets');
const check = process.argv.includes('--check');

const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  write: false,
  legalComments: 'eof',
  charset: 'utf8',
  target: ['es2020'],
  logLevel: 'warning',
};

async function bundle(entry, extra = {}) {
  const result = await build({ ...common, entryPoints: [join(here, entry)], outfile: 'out', ...extra });
  const files = result.outputFiles.filter((f) => !f.path.endsWith('.map'));
  if (files.length !== 1) throw new Error(`expected one output for ${entry}, got ${files.length}`);
  return Buffer.from(files[0].contents);
}

const hash = (buf) => createHash('sha256').update(buf).digest('hex').slice(0, 12);

async function outputs() {
  const appJs = await bundle('src/main.js', { format: 'esm' });
  const clientJs = await bundle('src/collab-client.js', { format: 'esm', minify: false });
  const appCss = await bundle('src/app.css', { loader: { '.css': 'css' } });
  const html = (await readFile(join(here, 'src', 'index.html'), 'utf8'))
    .replace('%APP_JS%', hash(appJs))
    .replace('%APP_CSS%', hash(appCss));
  return new Map([
    ['index.html', Buffer.from(html)],
    ['app.js', appJs],
    ['app.css', appCss],
    ['collab-client.js', clientJs],
  ]);
}

const files = await outputs();

if (check) {
  const problems = [];
  let present = [];
  try {
    present = await readdir(outDir);
  } catch {
    problems.push(`${outDir} does not exist`);
  }
  for (const [name, want] of files) {
    let have = null;
    try {
      have = await readFile(join(outDir, name));
    } catch {
      problems.push(`missing: ${name}`);
      continue;
    }
    if (!have.equals(want)) problems.push(`stale: ${name}`);
  }
  for (const name of present) if (!files.has(name)) problems.push(`unexpected: ${name}`);
  if (problems.length) {
    console.error('The committed web bundle is out of date; run `cd web && node build.mjs` and commit it.');
    for (const p of problems) console.error('  ' + p);
    process.exit(1);
  }
  console.log(`web bundle is up to date (${files.size} files in ${outDir})`);
} else {
  await mkdir(outDir, { recursive: true });
  for (const [name, buf] of files) await writeFile(join(outDir, name), buf);
  for (const [name, buf] of files) console.log(`${name.padEnd(18)} ${String(buf.length).padStart(8)} bytes`);
}
