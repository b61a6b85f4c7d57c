// The collab page: the document list at `/` and the editor at `/d/{id}`.

import { CollabClient, describeError } from './collab-client.js';
import { bindEditor, safeColor } from './editor.js';

const app = document.getElementById('app');

// ---- small helpers -------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection and try again.');
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const code = data && data.error && data.error.code;
    throw new ApiError(res.status, code || 'http_' + res.status, restErrorText(code, data && data.error && data.error.message));
  }
  return data;
}

function restErrorText(code, message) {
  switch (code) {
    case 'invalid_title':
      return 'A title needs 1 to 200 characters.';
    case 'not_found':
      return 'That document does not exist any more.';
    case 'too_large':
      return 'That is too large for the server.';
    case 'rate_limited':
      return 'Too many requests: wait a moment and try again.';
    case 'unavailable':
      return 'The server is temporarily unavailable. Try again shortly.';
    default:
      return message || 'Something went wrong.';
  }
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function formatTime(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso || '';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return plural(Math.round(s / 60), 'minute') + ' ago';
  if (s < 86400) return plural(Math.round(s / 3600), 'hour') + ' ago';
  return new Date(t).toLocaleString();
}

// ---- the local user --------------------------------------------------------------

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42a5a5', '#f032e6', '#9a6324', '#008080', '#c2185b'];
const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Badger', 'Finch', 'Marten', 'Ibis', 'Wren', 'Stoat', 'Puffin'];

function loadUser() {
  try {
    const u = JSON.parse(localStorage.getItem('collab:user') || 'null');
    if (u && typeof u.name === 'string' && u.name.trim() && safeColor(u.color) === u.color) return u;
  } catch {
    // fall through
  }
  const pick = (a) => a[Math.floor(Math.random() * a.length)];
  const u = { name: 'Anonymous ' + pick(ANIMALS), color: pick(COLORS) };
  saveUser(u);
  return u;
}

function saveUser(u) {
  try {
    localStorage.setItem('collab:user', JSON.stringify(u));
  } catch {
    // storage disabled: keep it for this page only
  }
}

// ---- the document list -------------------------------------------------------------

function renderList() {
  document.title = 'Documents — collab';
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const showError = (msg) => {
    error.textContent = msg;
    error.hidden = !msg;
  };
  const title = h('input', { name: 'title', placeholder: 'Title of a new document', maxlength: '200', required: true, 'aria-label': 'Title' });
  const createForm = h(
    'form',
    {
      class: 'create',
      onsubmit: async (e) => {
        e.preventDefault();
        showError('');
        try {
          const doc = await api('POST', '/api/documents', { title: title.value });
          location.assign('/d/' + encodeURIComponent(doc.id));
        } catch (err) {
          showError(err.message);
        }
      },
    },
    title,
    h('button', { type: 'submit' }, 'Create'),
  );
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, 'No documents yet. Create one above.');
  const more = h('button', { class: 'more', hidden: true, onclick: () => load(false) }, 'Show more');
  const table = h(
    'table',
    { class: 'docs' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Title'), h('th', { class: 'num' }, 'Revision'), h('th', {}, 'Last edited'), h('th', {}, ''))),
    tbody,
  );

  let loaded = 0;
  let total = 0;

  function row(doc) {
    const link = h('a', { href: '/d/' + encodeURIComponent(doc.id), class: 'title' }, doc.title);
    const titleCell = h('td', {}, link);
    const time = h('td', { class: 'time', title: doc.updated_at }, formatTime(doc.updated_at));
    const rev = h('td', { class: 'num rev' }, String(doc.rev));
    const tr = h('tr', { 'data-id': doc.id });

    const startRename = () => {
      const input = h('input', { value: link.textContent, maxlength: '200', 'aria-label': 'New title' });
      const form = h(
        'form',
        {
          class: 'rename',
          onsubmit: async (e) => {
            e.preventDefault();
            showError('');
            try {
              const updated = await api('PATCH', '/api/documents/' + encodeURIComponent(doc.id), { title: input.value });
              link.textContent = updated.title;
              time.textContent = formatTime(updated.updated_at);
              time.title = updated.updated_at;
              rev.textContent = String(updated.rev);
              titleCell.replaceChildren(link);
            } catch (err) {
              showError(err.message);
              if (err.code === 'not_found') tr.remove();
            }
          },
        },
        input,
        h('button', { type: 'submit' }, 'Save'),
        h('button', { type: 'button', class: 'secondary', onclick: () => titleCell.replaceChildren(link) }, 'Cancel'),
      );
      input.addEventListener('keydown', (e) => {
        if (e.key === 'Escape') titleCell.replaceChildren(link);
      });
      titleCell.replaceChildren(form);
      input.focus();
      input.select();
    };

    const remove = async () => {
      if (!confirm(`Delete “${link.textContent}”? This cannot be undone.`)) return;
      showError('');
      try {
        await api('DELETE', '/api/documents/' + encodeURIComponent(doc.id));
      } catch (err) {
        if (err.code !== 'not_found') {
          showError(err.message);
          return;
        }
      }
      tr.remove();
      total--;
      loaded--;
      empty.hidden = tbody.children.length > 0;
      table.hidden = tbody.children.length === 0;
    };

    tr.append(
      titleCell,
      rev,
      time,
      h(
        'td',
        { class: 'actions' },
        h('button', { class: 'secondary', onclick: startRename }, 'Rename'),
        h('button', { class: 'danger', onclick: remove }, 'Delete'),
      ),
    );
    return tr;
  }

  async function load(reset) {
    showError('');
    try {
      const offset = reset ? 0 : loaded;
      const data = await api('GET', `/api/documents?limit=50&offset=${offset}`);
      if (reset) {
        tbody.replaceChildren();
        loaded = 0;
      }
      for (const d of data.items) tbody.append(row(d));
      loaded += data.items.length;
      total = data.total;
      more.hidden = loaded >= total;
      empty.hidden = tbody.children.length > 0;
      table.hidden = tbody.children.length === 0;
    } catch (err) {
      showError(err.message);
    }
  }

  app.replaceChildren(
    h('header', { class: 'bar' }, h('a', { href: '/', class: 'brand' }, 'collab')),
    h('main', { class: 'list' }, h('h1', {}, 'Documents'), createForm, error, table, empty, more),
  );
  title.focus();
  load(true);
}

// ---- the editor ----------------------------------------------------------------------

function renderEditor(id) {
  let user = loadUser();
  const status = h('span', { class: 'status connecting', role: 'status', 'aria-live': 'polite' }, 'connecting…');
  const titleEl = h('span', { class: 'doc-title' }, '');
  const nameInput = h('input', { class: 'name', value: user.name, maxlength: '40', 'aria-label': 'Your name' });
  const swatch = h('span', { class: 'swatch', style: `background:${user.color}`, title: 'Your colour' });
  const banner = h('div', { class: 'banner', role: 'alert', hidden: true });
  const peopleList = h('ul', { class: 'people' });
  const editorHost = h('div', { class: 'editor' }, h('p', { class: 'loading' }, 'Loading…'));

  app.replaceChildren(
    h(
      'header',
      { class: 'bar' },
      h('a', { href: '/', class: 'brand' }, 'collab'),
      h('a', { href: '/', class: 'back' }, '← Documents'),
      titleEl,
      h('span', { class: 'spacer' }),
      status,
      h('label', { class: 'me' }, swatch, nameInput),
    ),
    banner,
    h('div', { class: 'workspace' }, editorHost, h('aside', { class: 'presence' }, h('h2', {}, 'Here now'), peopleList)),
  );

  const showBanner = (text, kind = 'error') => {
    banner.textContent = text;
    banner.className = 'banner ' + kind;
    banner.hidden = !text;
  };

  api('GET', '/api/documents/' + encodeURIComponent(id))
    .then((doc) => {
      titleEl.textContent = doc.title;
      document.title = doc.title + ' — collab';
    })
    .catch((err) => {
      if (err.code === 'not_found') showBanner(describeError('not_found'));
    });

  const client = new CollabClient({ docId: id });
  let binding = null;

  const renderStatus = () => {
    const n = client.pending;
    let text;
    switch (client.status) {
      case 'connected':
        text = 'connected';
        break;
      case 'connecting':
        text = 'connecting…';
        break;
      case 'reconnecting':
        text = n ? `reconnecting… — ${plural(n, 'unsynced edit')}` : 'reconnecting…';
        break;
      case 'offline':
        text = `offline — ${plural(n, 'unsynced edit')}`;
        break;
      default:
        text = n ? `disconnected — ${plural(n, 'unsynced edit')}` : 'disconnected';
    }
    status.textContent = text;
    status.className = 'status ' + client.status;
    status.title = n ? `${plural(n, 'edit')} not yet saved on the server` : 'All changes saved';
  };

  const renderPeople = () => {
    const items = [h('li', { class: 'self' }, h('span', { class: 'dot', style: `background:${user.color}` }), `${user.name} (you)`)];
    for (const [cid, p] of client.peers) {
      const u = p.user || {};
      items.push(h('li', { 'data-client': cid }, h('span', { class: 'dot', style: `background:${safeColor(u.color)}` }), u.name || 'Anonymous'));
    }
    peopleList.replaceChildren(...items);
  };

  client.addEventListener('status', renderStatus);
  client.addEventListener('peers', renderPeople);
  client.addEventListener('ack', () => {
    if (banner.classList.contains('info')) showBanner('');
  });
  client.addEventListener('error', (ev) => {
    const { code, text, fatal } = ev.detail;
    showBanner(text, code === 'rate_limited' ? 'info' : 'error');
    if (fatal && binding) binding.setReadOnly(true);
    if (code === 'document_deleted' || code === 'not_found') {
      editorHost.classList.add('gone');
    }
  });
  client.addEventListener('ready', () => {
    editorHost.replaceChildren();
    binding = bindEditor({ client, parent: editorHost, user: () => user });
    binding.view.focus();
    binding.sendPresence();
    window.collab.view = binding.view;
  });

  nameInput.addEventListener('change', () => {
    const name = nameInput.value.trim();
    if (!name) {
      nameInput.value = user.name;
      return;
    }
    user = { ...user, name };
    saveUser(user);
    renderPeople();
    if (binding) binding.sendPresence();
  });

  window.addEventListener('beforeunload', (e) => {
    if (client.pending > 0) {
      e.preventDefault();
      e.returnValue = '';
    }
  });

  // For debugging and the browser tests.
  window.collab = { client, view: null };
  renderStatus();
  renderPeople();
}

function renderNotFound() {
  document.title = 'Not found — collab';
  app.replaceChildren(
    h('header', { class: 'bar' }, h('a', { href: '/', class: 'brand' }, 'collab')),
    h('main', { class: 'list' }, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '/' }, 'Back to the documents'))),
  );
}

const m = location.pathname.match(/^\/d\/([^/]+)\/?$/);
if (location.pathname === '/' || location.pathname === '') renderList();
else if (m) renderEditor(decodeURIComponent(m[1]));
else renderNotFound();
