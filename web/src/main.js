// The collab page: the document list at `/` and the editor at `/d/{id}`.

import { CollabClient, authReason, describeError } from './collab-client.js';
import { bindEditor, safeColor } from './editor.js';

const app = document.getElementById('app');

// ---- the access token ----------------------------------------------------------
//
// A share link is `/d/{id}#token=<jwt>`: the fragment never reaches the server
// (nor its logs). At load the page takes the token out of the fragment, keeps
// it in sessionStorage (so a reload of this tab keeps working) and rewrites the
// address with history.replaceState, so the token is neither shown nor kept in
// the tab's history. Every REST call sends it as `Authorization: Bearer`, the
// WebSocket as `?token=`. Without a token (a server without access control)
// the page works as before.

const TOKEN_KEY = 'collab:token';
let memoryToken = null; // when sessionStorage is unavailable

function takeTokenFromFragment() {
  if (!location.hash || location.hash.length < 2) return false;
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has('token')) return false;
  const token = params.get('token');
  params.delete('token');
  if (token) {
    memoryToken = token;
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      // storage disabled: this page load only
    }
  }
  const rest = params.toString();
  history.replaceState(history.state, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  return true;
}

function currentToken() {
  try {
    const t = sessionStorage.getItem(TOKEN_KEY);
    if (t) return t;
  } catch {
    // fall through
  }
  return memoryToken;
}

function storeToken(token) {
  memoryToken = token;
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // keep it in memory
  }
}

/**
 * The token's claims, for display only (the server checks the signature and
 * decides; the page only hides buttons that would be refused). Null when there
 * is no token or it cannot be read.
 */
function tokenClaims(token = currentToken()) {
  if (!token) return null;
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

const RANK = { read: 1, write: 2, admin: 3 };

/** The role a token's `docs` claim gives on `id` (exact id, `prefix*`, or `*`; the highest wins). */
function roleFor(claims, id) {
  const docs = claims && claims.docs;
  if (!docs || typeof docs !== 'object') return null;
  let best = null;
  for (const [pattern, role] of Object.entries(docs)) {
    const hit = pattern === '*' || pattern === id || (pattern.endsWith('*') && id !== null && id.startsWith(pattern.slice(0, -1)));
    if (hit && RANK[role] && (!best || RANK[role] > RANK[best])) best = role;
  }
  return best;
}

/** Plain words for a refused session or request (401 / 403). */
function accessText(code, message) {
  if (code === 'forbidden') return 'You do not have access to this document.';
  switch (authReason(message)) {
    case 'revoked':
      return 'Access revoked. Ask the owner of this document for a new link.';
    case 'expired':
      return 'This link has expired. Ask the owner of this document for a new one.';
    default:
      return 'You are not signed in, or your access was denied. Open the link you were given again.';
  }
}

takeTokenFromFragment();
// A link for the page already open (only the fragment differs) does not load
// the page again: take its token and start over with it.
window.addEventListener('hashchange', () => {
  if (!new URLSearchParams(location.hash.slice(1)).has('token')) return;
  takeTokenFromFragment();
  location.reload();
});

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
  const headers = body === undefined ? {} : { 'Content-Type': 'application/json' };
  const token = currentToken();
  if (token) headers.Authorization = 'Bearer ' + token;
  try {
    res = await fetch(path, {
      method,
      headers,
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
    const serverMessage = data && data.error && data.error.message;
    const err = new ApiError(res.status, code || 'http_' + res.status, restErrorText(code, serverMessage));
    err.serverMessage = serverMessage || '';
    throw err;
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
    case 'unauthorized':
      return accessText(code, message);
    case 'forbidden':
      return 'You do not have permission to do that.';
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
  // With a token, offer only what it allows (the server decides anyway).
  const claims = tokenClaims();
  const may = (id, role) => !claims || RANK[roleFor(claims, id)] >= RANK[role];
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
  createForm.hidden = !may(null, 'admin');
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
        may(doc.id, 'admin') && h('button', { class: 'secondary', onclick: startRename }, 'Rename'),
        may(doc.id, 'admin') && h('button', { class: 'danger', onclick: remove }, 'Delete'),
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
      if (err.status === 401) {
        // Not signed in (or the token ended): nothing here can work.
        createForm.hidden = true;
        table.hidden = true;
        empty.hidden = true;
        more.hidden = true;
      }
    }
  }

  if (claims) empty.textContent = createForm.hidden ? 'No documents you can open.' : 'No documents yet. Create one above.';
  app.replaceChildren(
    h('header', { class: 'bar' }, h('a', { href: '/', class: 'brand' }, 'collab')),
    h('main', { class: 'list' }, h('h1', {}, 'Documents'), createForm, error, table, empty, more),
  );
  if (!createForm.hidden) title.focus();
  load(true);
}

// ---- the editor ----------------------------------------------------------------------

function renderEditor(id) {
  let user = loadUser();
  // A token may name its user: show that name unless this page changes it.
  const claims = tokenClaims();
  if (claims && typeof claims.name === 'string' && claims.name.trim()) user = { ...user, name: claims.name.trim().slice(0, 40) };
  const status = h('span', { class: 'status connecting', role: 'status', 'aria-live': 'polite' }, 'connecting…');
  const titleEl = h('span', { class: 'doc-title' }, '');
  const badge = h('span', { class: 'readonly-badge', hidden: true, title: 'You can read this document but not change it' }, 'Read only');
  const shareButton = h('button', { class: 'share secondary', type: 'button', hidden: true, 'aria-expanded': 'false' }, 'Share');
  const nameInput = h('input', { class: 'name', value: user.name, maxlength: '40', 'aria-label': 'Your name' });
  const swatch = h('span', { class: 'swatch', style: `background:${user.color}`, title: 'Your colour' });
  const banner = h('div', { class: 'banner', role: 'alert', hidden: true });
  const peopleList = h('ul', { class: 'people' });
  const editorHost = h('div', { class: 'editor' }, h('p', { class: 'loading' }, 'Loading…'));
  const sharePanel = renderSharePanel(id);

  app.replaceChildren(
    h(
      'header',
      { class: 'bar' },
      h('a', { href: '/', class: 'brand' }, 'collab'),
      h('a', { href: '/', class: 'back' }, '← Documents'),
      titleEl,
      badge,
      h('span', { class: 'spacer' }),
      status,
      shareButton,
      h('label', { class: 'me' }, swatch, nameInput),
    ),
    sharePanel.el,
    banner,
    h('div', { class: 'workspace' }, editorHost, h('aside', { class: 'presence' }, h('h2', {}, 'Here now'), peopleList)),
  );

  const showBanner = (text, kind = 'error') => {
    banner.textContent = text;
    banner.className = 'banner ' + kind;
    banner.hidden = !text;
  };

  shareButton.addEventListener('click', () => {
    const open = sharePanel.el.hidden;
    sharePanel.el.hidden = !open;
    shareButton.setAttribute('aria-expanded', String(open));
    if (open) sharePanel.focus();
  });

  // Set once the session has ended for good (access refused, document gone).
  let ended = false;

  api('GET', '/api/documents/' + encodeURIComponent(id))
    .then((doc) => {
      titleEl.textContent = doc.title;
      document.title = doc.title + ' — collab';
    })
    .catch((err) => {
      if (ended) return; // the WebSocket already said why
      if (err.code === 'not_found') showBanner(describeError('not_found'));
      else if (err.status === 401) showBanner(accessText('unauthorized', err.serverMessage || err.message));
      else if (err.status === 403) showBanner(accessText('forbidden'));
    });

  const client = new CollabClient({ docId: id, token: currentToken() });
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
      case 'unauthorized':
        text = 'signed out';
        break;
      case 'forbidden':
        text = 'no access';
        break;
      default:
        text = n ? `disconnected — ${plural(n, 'unsynced edit')}` : 'disconnected';
    }
    status.textContent = text;
    status.className = 'status ' + client.status;
    status.title = n ? `${plural(n, 'edit')} not yet saved on the server` : 'All changes saved';
  };

  // The role as the server gave it: the badge, the editor's read-only state
  // (changed live when a refreshed token changes the role) and Share, which
  // needs admin and a server with access control (exp is null without one:
  // share links need a signing key).
  const renderRole = () => {
    const readOnly = client.readOnly;
    badge.hidden = !readOnly || ended;
    shareButton.hidden = ended || client.role !== 'admin' || client.exp === null;
    if (shareButton.hidden) sharePanel.el.hidden = true;
    if (binding) binding.setReadOnly(readOnly || ended);
    // A reader's presence is not shared, so a name would go nowhere.
    nameInput.disabled = readOnly || ended;
    nameInput.title = nameInput.disabled ? 'Only people who can edit are shown to others' : '';
    document.body.classList.toggle('read-only', readOnly);
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
  client.addEventListener('auth', renderRole);
  client.addEventListener('token', (ev) => storeToken(ev.detail.token));
  client.addEventListener('ack', () => {
    if (banner.classList.contains('info')) showBanner('');
  });
  client.addEventListener('error', (ev) => {
    const { code, text, fatal, message } = ev.detail;
    const access = fatal && (code === 'unauthorized' || code === 'forbidden');
    showBanner(access ? accessText(code, message) : text, code === 'rate_limited' ? 'info' : 'error');
    if (fatal) {
      ended = true;
      renderRole();
      if (binding) binding.setReadOnly(true);
      else editorHost.replaceChildren();
    }
    if (code === 'document_deleted' || code === 'not_found' || access) {
      editorHost.classList.add('gone');
    }
  });
  client.addEventListener('ready', () => {
    editorHost.replaceChildren();
    binding = bindEditor({ client, parent: editorHost, user: () => user });
    renderRole();
    binding.view.focus();
    binding.sendPresence();
    window.collab.view = binding.view;
    window.collab.binding = binding;
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
    if (client.pending > 0 && !ended) {
      e.preventDefault();
      e.returnValue = '';
    }
  });

  // For debugging and the browser tests.
  window.collab = { client, view: null, binding: null };
  renderStatus();
  renderPeople();
}

/** The Share panel: a read or write link to this document, valid for a week. */
function renderSharePanel(id) {
  const LINK_TTL_SECS = 7 * 24 * 3600;
  const roleSelect = h(
    'select',
    { class: 'share-role', 'aria-label': 'Access for people with the link' },
    h('option', { value: 'read' }, 'can read'),
    h('option', { value: 'write' }, 'can edit'),
  );
  const create = h('button', { type: 'submit', class: 'create-link' }, 'Create link');
  const url = h('input', { class: 'share-url', readonly: true, 'aria-label': 'Share link', hidden: true });
  const copy = h('button', { type: 'button', class: 'copy secondary', hidden: true }, 'Copy');
  const note = h('p', { class: 'share-note' }, 'Anyone with the link gets this access for 7 days, until an admin revokes it.');
  const error = h('p', { class: 'error', role: 'alert', hidden: true });

  const form = h(
    'form',
    {
      class: 'share-form',
      onsubmit: async (e) => {
        e.preventDefault();
        error.hidden = true;
        create.disabled = true;
        try {
          const link = await api('POST', '/api/documents/' + encodeURIComponent(id) + '/links', {
            role: roleSelect.value,
            ttl_secs: LINK_TTL_SECS,
          });
          url.value = new URL(link.url, location.origin).href;
          url.dataset.role = roleSelect.value;
          url.hidden = false;
          copy.hidden = false;
          copy.textContent = 'Copy';
          const until = typeof link.exp === 'number' ? new Date(link.exp * 1000).toLocaleString() : null;
          note.textContent =
            `Anyone with this link ${roleSelect.value === 'write' ? 'can edit' : 'can read'} this document` + (until ? ` until ${until}.` : '.');
          url.focus();
          url.select();
        } catch (err) {
          error.textContent = err.status === 409 ? 'Share links are not available on this server.' : err.message;
          error.hidden = false;
        } finally {
          create.disabled = false;
        }
      },
    },
    h('label', {}, 'People with the link ', roleSelect),
    create,
  );

  copy.addEventListener('click', async () => {
    let ok = false;
    try {
      await navigator.clipboard.writeText(url.value);
      ok = true;
    } catch {
      url.select();
      try {
        ok = document.execCommand('copy');
      } catch {
        ok = false;
      }
    }
    copy.textContent = ok ? 'Copied' : 'Press Ctrl+C to copy';
  });

  const el = h('div', { class: 'share-panel', hidden: true }, form, h('div', { class: 'share-result' }, url, copy), note, error);
  return { el, focus: () => roleSelect.focus() };
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
