// CodeMirror 6 binding for CollabClient.
//
// CodeMirror counts UTF-16 code units; the protocol counts code points.
// Local transactions become text-unicode ops (code points) for the client;
// remote ops become CodeMirror changes (UTF-16), annotated so they are not
// sent back. Peers' selections are drawn as decorations with a name label.

import { Annotation, EditorState, StateEffect, StateField, Transaction, Compartment } from '@codemirror/state';
import {
  Decoration,
  EditorView,
  WidgetType,
  drawSelection,
  highlightActiveLine,
  highlightSpecialChars,
  keymap,
  lineNumbers,
} from '@codemirror/view';
import { defaultKeymap, history, historyKeymap, indentWithTab } from '@codemirror/commands';
import { textType } from './collab-client.js';

const SURROGATE_PAIR = /[\uD800-\uDBFF][\uDC00-\uDFFF]/g;
const HAS_HIGH_SURROGATE = /[\uD800-\uDBFF]/;

/** Code points in a UTF-16 string. */
export function cpLength(s) {
  if (!HAS_HIGH_SURROGATE.test(s)) return s.length;
  const pairs = s.match(SURROGATE_PAIR);
  return s.length - (pairs ? pairs.length : 0);
}

/** UTF-16 offset in `doc` (a CodeMirror Text) → code point offset. */
export function toCodePoints(doc, pos) {
  return cpLength(doc.sliceString(0, pos));
}

/** Code point offset → UTF-16 offset in `doc`, clamped to its end. */
export function toUtf16(doc, cp) {
  return advance(doc, 0, cp);
}

/** From UTF-16 offset `pos`, move forward `n` code points; returns the UTF-16 offset. */
function advance(doc, pos, n) {
  if (n <= 0) return pos;
  const end = Math.min(doc.length, pos + 2 * n);
  const s = doc.sliceString(pos, end);
  if (!HAS_HIGH_SURROGATE.test(s)) return Math.min(doc.length, pos + n);
  let i = 0;
  while (n > 0 && i < s.length) {
    const c = s.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff && i + 1 < s.length ? 2 : 1;
    n--;
  }
  return pos + i;
}

/** A CodeMirror ChangeSet (against `startDoc`) → a text-unicode op. */
export function changesToOp(changes, startDoc) {
  const op = [];
  let last = 0;
  changes.iterChanges((fromA, toA, _fromB, _toB, inserted) => {
    const skip = cpLength(startDoc.sliceString(last, fromA));
    if (skip) op.push(skip);
    const del = cpLength(startDoc.sliceString(fromA, toA));
    if (del) op.push({ d: del });
    const ins = inserted.toString();
    if (ins) op.push(ins);
    last = toA;
  });
  return textType.normalize(op);
}

/** A text-unicode op (against `doc`) → a CodeMirror change spec list. */
export function opToChanges(op, doc) {
  const changes = [];
  let pos = 0;
  for (const c of op) {
    if (typeof c === 'number') {
      pos = advance(doc, pos, c);
    } else if (typeof c === 'string') {
      changes.push({ from: pos, insert: c });
    } else if (c && c.d !== undefined) {
      const n = typeof c.d === 'number' ? c.d : cpLength(c.d);
      const to = advance(doc, pos, n);
      changes.push({ from: pos, to });
      pos = to;
    }
  }
  return changes;
}

const readOnlyExtensions = [EditorState.readOnly.of(true), EditorView.editable.of(false)];

/** Marks transactions that came from the server. */
export const remoteChange = Annotation.define();

// ---- remote cursors -----------------------------------------------------------

const setPeersEffect = StateEffect.define();

export function safeColor(c) {
  return typeof c === 'string' && /^#[0-9a-fA-F]{6}$/.test(c) ? c : '#888888';
}

class CaretWidget extends WidgetType {
  constructor(name, color) {
    super();
    this.name = name;
    this.color = color;
  }
  eq(other) {
    return other.name === this.name && other.color === this.color;
  }
  toDOM() {
    const caret = document.createElement('span');
    caret.className = 'cm-peer-caret';
    caret.style.borderColor = this.color;
    const label = document.createElement('span');
    label.className = 'cm-peer-label';
    label.style.backgroundColor = this.color;
    label.textContent = this.name;
    caret.appendChild(label);
    return caret;
  }
  ignoreEvent() {
    return true;
  }
}

function buildPeerDecorations(peers, doc) {
  const ranges = [];
  for (const p of peers) {
    if (!p.selection) continue;
    const color = safeColor(p.user && p.user.color);
    const name = (p.user && p.user.name) || 'Anonymous';
    const anchor = toUtf16(doc, p.selection[0]);
    const head = toUtf16(doc, p.selection[1]);
    const from = Math.min(anchor, head);
    const to = Math.max(anchor, head);
    if (from < to) {
      ranges.push(
        Decoration.mark({
          class: 'cm-peer-selection',
          attributes: { style: `background-color: ${color}40`, 'data-peer': p.clientId },
        }).range(from, to),
      );
    }
    ranges.push(
      Decoration.widget({ widget: new CaretWidget(name, color), side: head >= to && from < to ? -1 : 1 }).range(head),
    );
  }
  return Decoration.set(ranges, true);
}

const peersField = StateField.define({
  create: () => Decoration.none,
  update(value, tr) {
    value = value.map(tr.changes);
    for (const e of tr.effects) {
      if (e.is(setPeersEffect)) value = buildPeerDecorations(e.value, tr.state.doc);
    }
    return value;
  },
  provide: (f) => EditorView.decorations.from(f),
});

// ---- the binding -------------------------------------------------------------------

/**
 * Create a CodeMirror view bound to a CollabClient whose content is loaded.
 *
 * @param {object} o
 * @param {import('./collab-client.js').CollabClient} o.client
 * @param {HTMLElement} o.parent
 * @param {() => {name:string,color:string}} o.user the local user, read at each presence update
 * @returns {{view: EditorView, setReadOnly(b:boolean):void, refreshPeers():void, sendPresence():void, destroy():void}}
 *
 * The view starts read only when `client.readOnly`; `setReadOnly` switches it
 * (a Compartment holding EditorState.readOnly and EditorView.editable), e.g.
 * when a refreshed token changes the role.
 */
export function bindEditor({ client, parent, user }) {
  const editable = new Compartment();
  let presenceTimer = null;

  const sendPresence = () => {
    clearTimeout(presenceTimer);
    presenceTimer = null;
    const sel = view.state.selection.main;
    const doc = view.state.doc;
    const anchor = toCodePoints(doc, sel.anchor);
    const head = sel.anchor === sel.head ? anchor : toCodePoints(doc, sel.head);
    client.setPresence([anchor, head], user());
  };
  const schedulePresence = () => {
    if (presenceTimer === null) presenceTimer = setTimeout(sendPresence, 40);
  };

  const listener = EditorView.updateListener.of((update) => {
    let local = false;
    for (const tr of update.transactions) {
      if (!tr.docChanged || tr.annotation(remoteChange)) continue;
      const op = changesToOp(tr.changes, tr.startState.doc);
      if (op.length) client.submitOp(op);
      local = true;
    }
    if (local || (update.selectionSet && !update.transactions.every((t) => t.annotation(remoteChange)))) {
      schedulePresence();
    }
  });

  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: client.content,
      extensions: [
        EditorState.lineSeparator.of('\n'),
        lineNumbers(),
        highlightSpecialChars(),
        history(),
        drawSelection(),
        highlightActiveLine(),
        EditorView.lineWrapping,
        keymap.of([...defaultKeymap, ...historyKeymap, indentWithTab]),
        editable.of(client.readOnly ? readOnlyExtensions : []),
        // Belt and braces: while the connection is read only, no local change
        // reaches the document (the client would refuse it anyway, and the
        // editor would then differ from client.content).
        EditorState.changeFilter.of((tr) => !client.readOnly || !!tr.annotation(remoteChange)),
        peersField,
        listener,
      ],
    }),
  });

  const refreshPeers = () => {
    const peers = [];
    for (const [clientId, p] of client.peers) peers.push({ clientId, selection: p.selection, user: p.user });
    view.dispatch({ effects: setPeersEffect.of(peers) });
  };

  const onRemote = (ev) => {
    const { op } = ev.detail;
    const changes = opToChanges(op, view.state.doc);
    view.dispatch({
      changes,
      annotations: [remoteChange.of(true), Transaction.addToHistory.of(false), Transaction.remote.of(true)],
    });
    refreshPeers();
  };
  const onPeers = () => refreshPeers();
  client.addEventListener('remoteop', onRemote);
  client.addEventListener('peers', onPeers);
  refreshPeers();

  return {
    view,
    sendPresence,
    refreshPeers,
    setReadOnly(ro) {
      view.dispatch({ effects: editable.reconfigure(ro ? readOnlyExtensions : []) });
    },
    destroy() {
      clearTimeout(presenceTimer);
      client.removeEventListener('remoteop', onRemote);
      client.removeEventListener('peers', onPeers);
      view.destroy();
    },
  };
}
