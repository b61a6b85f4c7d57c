#!/usr/bin/env node
// Generates conformance vectors for crates/collab-ot from the reference
// implementation `ot-text-unicode` 4.0.0. See README.md.
//
// All positions and lengths are in Unicode code points (scalar values), which
// is what ot-text-unicode uses and what the Rust engine (ropey chars) uses.
//
// Output: one JSON file per function in crates/collab-ot/tests/vectors/, each
// a JSON array with one case per line.
'use strict';

const fs = require('fs');
const path = require('path');
const assert = require('assert');
const { type } = require('ot-text-unicode');

const SEED = 0x5eed2024;
const OUT_DIR = path.join(__dirname, '..', '..', 'crates', 'collab-ot', 'tests', 'vectors');

const COUNTS = {
  apply: 800,
  transformPairs: 450, // two cases (left, right) per pair
  compose: 800,
  selection: 800,
  invertWithDoc: 350,
  makeInvertible: 250,
  invert: 250,
};

// ---------------------------------------------------------------------------
// Seeded PRNG (mulberry32) and helpers.

function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = mulberry32(SEED);
/** Integer in [lo, hi] inclusive. */
const randInt = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const chance = (p) => rand() < p;
const pick = (arr) => arr[Math.floor(rand() * arr.length)];

// ---------------------------------------------------------------------------
// Text generation. Documents are handled as arrays of code points.

const LETTERS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'.split('');
const NON_BMP = ['😭', '🎉', '𝄞', '🤖'];
const BMP_NON_ASCII = ['é', '中'];

function randomChar() {
  const r = rand();
  if (r < 0.55) return pick(LETTERS);
  if (r < 0.65) return ' ';
  if (r < 0.72) return '\n';
  if (r < 0.88) return pick(NON_BMP);
  return pick(BMP_NON_ASCII);
}

/** Random string of n code points. */
function randomText(n) {
  let s = '';
  for (let i = 0; i < n; i++) s += randomChar();
  return s;
}

/** Random document, 0..~40 code points, biased toward small and empty docs. */
function randomDoc() {
  const r = rand();
  let n;
  if (r < 0.08) n = 0;
  else if (r < 0.25) n = randInt(1, 3);
  else if (r < 0.7) n = randInt(4, 15);
  else n = randInt(16, 40);
  return randomText(n);
}

function randomInsertText() {
  const r = rand();
  if (r < 0.15) return pick(NON_BMP); // a single emoji
  if (r < 0.6) return randomText(randInt(1, 3));
  return randomText(randInt(4, 10));
}

const cps = (s) => Array.from(s);
const cpLen = (s) => Array.from(s).length;
const clone = (x) => JSON.parse(JSON.stringify(x));

// ---------------------------------------------------------------------------
// Random valid operations.

/**
 * Random op valid against doc (a string). The result is passed through
 * type.normalize. Components are chosen while walking the document; deletes
 * use either the {d: n} or the {d: "text"} form (with the real text).
 *
 * opts.textDeletes: 'mixed' (default) | 'text' | 'count'
 * opts.dense: probability of continuing after each component (default 0.85)
 */
function randomOp(doc, opts = {}) {
  const chars = cps(doc);
  const n = chars.length;
  const textDeletes = opts.textDeletes || 'mixed';
  const cont = opts.dense == null ? 0.85 : opts.dense;
  const op = [];
  let pos = 0;
  if (chance(0.04)) return []; // the no-op
  for (;;) {
    const remaining = n - pos;
    const r = rand();
    if (remaining === 0) {
      if (chance(0.35)) op.push(randomInsertText());
      break;
    }
    if (r < 0.38) {
      const k = chance(0.7) ? randInt(1, Math.min(remaining, 4)) : randInt(1, remaining);
      op.push(k);
      pos += k;
    } else if (r < 0.65) {
      op.push(randomInsertText());
    } else {
      const k = chance(0.75) ? randInt(1, Math.min(remaining, 4)) : randInt(1, remaining);
      const asText = textDeletes === 'text' || (textDeletes === 'mixed' && chance(0.5));
      op.push({ d: asText ? chars.slice(pos, pos + k).join('') : k });
      pos += k;
    }
    if (!chance(cont)) break;
  }
  return type.normalize(op);
}

/**
 * Return a normalized copy of op with an insert of text placed at pre-position
 * p (p <= base length of op, or anywhere up to the doc length: a trailing skip
 * is added if needed). Splits a skip or delete that straddles p. The insert is
 * placed before any component that starts at p.
 */
function insertAtPre(op, p, text) {
  const out = [];
  let pre = 0;
  let done = false;
  for (const c of op) {
    if (!done && pre === p) {
      out.push(text);
      done = true;
    }
    const len = typeof c === 'string' ? 0 : typeof c === 'number' ? c : typeof c.d === 'number' ? c.d : cpLen(c.d);
    if (!done && len > 0 && pre < p && p < pre + len) {
      const a = p - pre;
      const b = len - a;
      if (typeof c === 'number') {
        out.push(a, text, b);
      } else if (typeof c.d === 'number') {
        out.push({ d: a }, text, { d: b });
      } else {
        const t = cps(c.d);
        out.push({ d: t.slice(0, a).join('') }, text, { d: t.slice(a).join('') });
      }
      done = true;
    } else {
      out.push(c);
    }
    pre += len;
  }
  if (!done) {
    if (p > pre) out.push(p - pre);
    out.push(text);
  }
  return type.normalize(out);
}

/** Pre-positions (in the original doc) at which op inserts text. */
function insertPositions(op) {
  const res = [];
  let pre = 0;
  for (const c of op) {
    if (typeof c === 'string') res.push(pre);
    else if (typeof c === 'number') pre += c;
    else pre += typeof c.d === 'number' ? c.d : cpLen(c.d);
  }
  return res;
}

/** Boundaries (pre-positions) of every component of op. */
function boundaries(op) {
  const res = [0];
  let pre = 0;
  for (const c of op) {
    if (typeof c === 'number') pre += c;
    else if (typeof c === 'object') pre += typeof c.d === 'number' ? c.d : cpLen(c.d);
    res.push(pre);
  }
  return res;
}

function validAgainst(op, doc) {
  let base = 0;
  for (const c of op) {
    if (typeof c === 'number') base += c;
    else if (typeof c === 'object') {
      if (typeof c.d === 'string') {
        // The text must match the document.
        const chars = cps(doc);
        if (chars.slice(base, base + cpLen(c.d)).join('') !== c.d) return false;
        base += cpLen(c.d);
      } else base += c.d;
    }
  }
  return base <= cpLen(doc);
}

// The reference may mutate its inputs (its append helper merges in place), so
// every call gets deep copies.
const ref = {
  apply: (doc, op) => type.apply(doc, clone(op)),
  transform: (op, other, side) => type.transform(clone(op), clone(other), side),
  compose: (a, b) => type.compose(clone(a), clone(b)),
  transformSelection: (sel, op) => type.transformSelection(clone(sel), clone(op)),
  invertWithDoc: (op, doc) => type.invertWithDoc(clone(op), doc),
  makeInvertible: (op, doc) => type.makeInvertible(clone(op), doc),
  invert: (op) => type.invert(clone(op)),
  strip: (op) => type.stripInvertible(clone(op)),
};

// ---------------------------------------------------------------------------
// Case generators.

let skipped = 0;
function attempt(fn) {
  try {
    return fn();
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    skipped++;
    return null;
  }
}

function genApply() {
  const cases = [];
  while (cases.length < COUNTS.apply) {
    const c = attempt(() => {
      const doc = randomDoc();
      const op = randomOp(doc);
      assert(validAgainst(op, doc));
      const result = ref.apply(doc, op);
      let delta = 0;
      for (const comp of op) {
        if (typeof comp === 'string') delta += cpLen(comp);
        else if (typeof comp === 'object') delta -= typeof comp.d === 'number' ? comp.d : cpLen(comp.d);
      }
      assert.strictEqual(cpLen(result), cpLen(doc) + delta);
      return { doc, op, result };
    });
    if (c) cases.push(c);
  }
  return cases;
}

/** A concurrent pair (op, other) on doc, with many insert ties. */
function randomPair() {
  const doc = randomDoc();
  const n = cpLen(doc);
  const r = rand();
  let op;
  let other;
  if (r < 0.15) {
    // Classic tie: two plain inserts at the same position.
    const p = randInt(0, n);
    op = type.normalize(p === 0 ? [randomInsertText()] : [p, randomInsertText()]);
    other = type.normalize(p === 0 ? [randomInsertText()] : [p, randomInsertText()]);
  } else if (r < 0.25) {
    // Identical inserts at the same position.
    const p = randInt(0, n);
    const t = randomInsertText();
    op = type.normalize(p === 0 ? [t] : [p, t]);
    other = clone(op);
  } else if (r < 0.5) {
    // Random ops, with other forced to insert where op inserts (or at a
    // boundary of op's components: start/middle/end of deletes and skips).
    op = randomOp(doc);
    other = randomOp(doc);
    const ins = insertPositions(op);
    const cands = ins.length && chance(0.7) ? ins : boundaries(op).filter((b) => b <= n);
    const p = pick(cands);
    other = insertAtPre(other, p, randomInsertText());
    if (chance(0.3)) op = insertAtPre(op, p, randomInsertText());
  } else if (r < 0.6) {
    // Overlapping deletes (both text-form, both count-form, or mixed).
    op = randomOp(doc, { textDeletes: pick(['text', 'count', 'mixed']) });
    other = randomOp(doc, { textDeletes: pick(['text', 'count', 'mixed']) });
  } else if (r < 0.66) {
    // Same op on both sides.
    op = randomOp(doc);
    other = clone(op);
  } else {
    op = randomOp(doc);
    other = randomOp(doc);
  }
  return { doc, op, other };
}

function genTransform() {
  const cases = [];
  let pairs = 0;
  while (pairs < COUNTS.transformPairs) {
    const res = attempt(() => {
      const { doc, op, other } = randomPair();
      assert(validAgainst(op, doc) && validAgainst(other, doc));
      const out = [];
      for (const side of ['left', 'right']) {
        const otherSide = side === 'left' ? 'right' : 'left';
        const opT = ref.transform(op, other, side);
        const otherT = ref.transform(other, op, otherSide);
        // TP1 in the reference itself.
        const viaOther = ref.apply(ref.apply(doc, other), opT);
        const viaOp = ref.apply(ref.apply(doc, op), otherT);
        assert.strictEqual(viaOther, viaOp, `TP1 failed in reference: ${JSON.stringify({ doc, op, other, side })}`);
        // The transformed op must be valid on the other side's result.
        assert(validAgainst(opT, ref.apply(doc, other)), `transformed op invalid: ${JSON.stringify({ doc, op, other, side, opT })}`);
        out.push({ doc, op, other, side, result: opT });
      }
      return out;
    });
    if (res) {
      cases.push(...res);
      pairs++;
    }
  }
  return cases;
}

function genCompose() {
  const cases = [];
  while (cases.length < COUNTS.compose) {
    const c = attempt(() => {
      const doc = randomDoc();
      const mode = pick(['mixed', 'mixed', 'text', 'count']);
      const a = randomOp(doc, { textDeletes: mode });
      const mid = ref.apply(doc, a);
      let b = randomOp(mid, { textDeletes: chance(0.7) ? mode : pick(['text', 'count', 'mixed']) });
      if (chance(0.2)) {
        // Make b touch a's inserts: insert where a inserted (in post coords).
        const post = [];
        let p = 0;
        for (const comp of a) {
          if (typeof comp === 'number') p += comp;
          else if (typeof comp === 'string') { post.push(p); p += cpLen(comp); post.push(p); }
        }
        if (post.length) b = insertAtPre(b, pick(post), randomInsertText());
      }
      assert(validAgainst(a, doc) && validAgainst(b, mid));
      const result = ref.compose(a, b);
      assert.strictEqual(ref.apply(doc, result), ref.apply(mid, b), 'compose changes the result');
      return { doc, a, b, result };
    });
    if (c) cases.push(c);
  }
  return cases;
}

function genSelection() {
  const cases = [];
  while (cases.length < COUNTS.selection) {
    const c = attempt(() => {
      const doc = randomDoc();
      const n = cpLen(doc);
      const op = randomOp(doc);
      // Positions: often on a component boundary (ties with inserts and
      // delete edges), otherwise anywhere in 0..=n.
      const bounds = boundaries(op).filter((b) => b <= n).concat([0, n]);
      const randPos = () => (chance(0.5) ? pick(bounds) : randInt(0, n));
      let selection;
      const r = rand();
      if (r < 0.4) selection = randPos();
      else if (r < 0.55) {
        const p = randPos();
        selection = [p, p];
      } else {
        const a = randPos();
        const b = randPos();
        selection = chance(0.5) ? [Math.min(a, b), Math.max(a, b)] : [Math.max(a, b), Math.min(a, b)];
      }
      const result = ref.transformSelection(selection, op);
      return { doc, op, selection, result };
    });
    if (c) cases.push(c);
  }
  return cases;
}

function genInvert() {
  const cases = [];
  let k = 0;
  while (k < COUNTS.invertWithDoc) {
    const c = attempt(() => {
      const doc = randomDoc();
      const op = randomOp(doc);
      const result = ref.invertWithDoc(op, doc);
      assert.strictEqual(ref.apply(ref.apply(doc, op), result), doc, 'invert does not undo');
      return { kind: 'invert_with_doc', doc, op, result };
    });
    if (c) { cases.push(c); k++; }
  }
  k = 0;
  while (k < COUNTS.makeInvertible) {
    const c = attempt(() => {
      const doc = randomDoc();
      const op = randomOp(doc);
      const result = ref.makeInvertible(op, doc);
      assert(type.isInvertible(result));
      assert.deepStrictEqual(ref.strip(result), ref.strip(op));
      return { kind: 'make_invertible', doc, op, result };
    });
    if (c) { cases.push(c); k++; }
  }
  k = 0;
  while (k < COUNTS.invert) {
    const c = attempt(() => {
      const doc = randomDoc();
      // Only text-form deletes, so the op is invertible without the doc.
      const op = randomOp(doc, { textDeletes: 'text' });
      assert(type.isInvertible(op));
      const result = ref.invert(op);
      assert.strictEqual(ref.apply(ref.apply(doc, op), result), doc, 'invert does not undo');
      return { kind: 'invert', doc, op, result };
    });
    if (c) { cases.push(c); k++; }
  }
  return cases;
}

// ---------------------------------------------------------------------------

function writeCases(name, cases) {
  const text = '[\n' + cases.map((c) => JSON.stringify(c)).join(',\n') + '\n]\n';
  const file = path.join(OUT_DIR, name);
  fs.writeFileSync(file, text);
  const size = Buffer.byteLength(text);
  assert(size < 1024 * 1024, `${name} is too large (${size} bytes)`);
  console.log(`${name}: ${cases.length} cases, ${size} bytes`);
}

fs.mkdirSync(OUT_DIR, { recursive: true });
writeCases('apply.json', genApply());
writeCases('transform.json', genTransform());
writeCases('compose.json', genCompose());
writeCases('transform_selection.json', genSelection());
writeCases('invert.json', genInvert());
if (skipped) console.log(`skipped ${skipped} cases where the reference threw`);
