// Meridian's web console: hash-routed pages over the hub's REST APIs, called
// through /console/api/ with the session cookie (the browser never holds the
// admin key). No framework and no build step; the Content-Security-Policy
// allows only this script, so no inline handlers or styles.
'use strict';

const state = { csrf: null, agentUrl: '', timers: [], page: null, generation: 0, flash: null };

// Ids in URLs are always encoded: an id is data, never a path.
const enc = encodeURIComponent;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A button for something that cannot be undone: the first press asks
// ("Really …?"), the second does it; leaving the button (blur) asks again
// next time. `hold(true)` keeps a refreshing list still while it asks.
function confirmed(label, question, attrs, action, hold) {
  let asking = false;
  const button = h('button', { type: 'button', class: 'danger', ...attrs, on: {
    click: async () => {
      if (!asking) { asking = true; if (hold) hold(true); button.textContent = question; return; }
      asking = false; button.textContent = label;
      await action();
      if (hold) hold(false);
    },
    blur: () => { if (asking) { asking = false; button.textContent = label; if (hold) hold(false); } },
  } }, label);
  return button;
}

function say(text, ok) {
  const m = document.getElementById('message');
  m.textContent = text;
  m.className = ok ? 'ok' : '';
  m.hidden = !text;
}

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (state.csrf) init.headers['x-csrf-token'] = state.csrf;
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`/console/api${path}`, init);
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = text; }
  if (!res.ok) {
    if (res.status === 401 && json && /sign in|signed in/.test(json.message || '')) { signedOut(); }
    const why = json && (json.message || json.error) ? (json.message || json.error) : `${res.status} ${res.statusText}`;
    throw new Error(why);
  }
  return json;
}

// Runs an action, showing its error (or a success message) to the user.
async function act(fn, okText) {
  try {
    const out = await fn();
    if (okText) say(okText, true);
    return out;
  } catch (e) {
    say(e.message || String(e));
    return undefined;
  }
}

// Runs `fn` now and again `ms` after each run has ended (so two runs never
// overlap), for as long as the page that started it is shown.
function every(ms, fn) {
  const generation = state.generation;
  const run = async () => {
    try { await fn(); } finally {
      if (generation === state.generation) state.timers.push(setTimeout(run, ms));
    }
  };
  run();
}

function badge(text) { return h('span', { class: `badge ${text}`, text }); }
function table(headers, rows, label) {
  return h('div', { class: 'table-wrap' },
    h('table', { 'aria-label': label },
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, rows)));
}
function field(label, input) { return h('label', {}, label, input); }
function when(t) { return !t || t.startsWith('0001-') ? 'never' : t.replace('T', ' ').replace(/\.\d+Z$/, 'Z'); }
function secret(text, what) {
  const pre = h('pre', { class: 'secret', id: 'shown-secret', tabindex: '0' }, text);
  const copy = h('button', { type: 'button', class: 'secondary', on: { click: async () => {
    try { await navigator.clipboard.writeText(text); say(`${what} copied`, true); }
    catch (_) { const r = document.createRange(); r.selectNodeContents(pre); const s = getSelection(); s.removeAllRanges(); s.addRange(r); say(`${what} selected: press Ctrl+C to copy`, true); }
  } } }, `Copy ${what}`);
  return h('div', { class: 'card', role: 'region', 'aria-label': what },
    h('p', {}, h('strong', {}, `${what}: shown once. `), 'Store it now; the hub keeps only its hash.'), pre, copy);
}

function signedOut() {
  state.csrf = null;
  document.getElementById('nav').hidden = true;
  render();
}

function signIn() {
  const key = h('input', { type: 'password', id: 'admin-key', name: 'key', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'stack card signin', 'aria-labelledby': 'signin-title', on: { submit: async (e) => {
    e.preventDefault();
    try {
      const res = await fetch('/console/login', { method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: key.value }) });
      const json = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(json.message || `${res.status} ${res.statusText}`);
      state.csrf = json.csrf; state.agentUrl = json.agent_url || '';
      say('');
      if (!location.hash || location.hash === '#/signin') location.hash = '#/agents'; else render();
    } catch (err) { say(err.message); key.select(); }
  } } },
  h('h1', { id: 'signin-title' }, 'Sign in'),
  field('Admin key', key),
  h('button', { type: 'submit' }, 'Sign in'));
  return [form];
}

// ---------- Agents ----------
function agentsPage(main) {
  const name = h('input', { id: 'agent-name', required: true });
  const desc = h('input', { id: 'agent-description' });
  const shown = h('div', { id: 'agent-token' });
  const body = h('div', {});
  const create = h('form', { class: 'inline card', 'aria-label': 'New agent', on: { submit: async (e) => {
    e.preventDefault();
    const a = await act(() => api('POST', '/api/agents/', { name: name.value, description: desc.value }), `Agent ${name.value} created`);
    if (a) { name.value = ''; desc.value = ''; refresh(); }
  } } }, field('Name', name), field('Description', desc), h('button', { type: 'submit' }, 'New agent'));

  async function token(agent) {
    const t = await act(() => api('POST', '/api/auth/token/', { agent_id: agent.id }), `A new token for ${agent.name} (the previous one no longer works)`);
    if (!t) return;
    const yaml = `governanceDashboard:\n  server:\n    url: "${state.agentUrl}"\n  auth:\n    token: "${t.token}"\ninstances:\n  - name: "tyk-provider"\n    type: "tyk"\n    config:\n      host: "http://dashboard:3000"\n      auth: "your-tyk-api-key"\n`;
    shown.replaceChildren(secret(t.token, 'Agent token'), h('h2', {}, 'agent-config.yaml'), h('pre', { id: 'agent-yaml' }, yaml));
  }
  let editing = false;
  const hold = (on) => { editing = on; };
  function row(a) {
    const del = confirmed('Delete', `Really delete ${a.name}?`, { 'data-action': 'delete' }, async () => {
      if (await act(() => api('DELETE', `/api/agents/${enc(a.id)}`), `Agent ${a.name} deleted`) !== undefined) { editing = false; refresh(); }
    }, hold);
    const rename = h('button', { type: 'button', class: 'secondary', 'data-action': 'rename', on: { click: () => {
      const input = h('input', { 'aria-label': `New name for ${a.name}`, value: a.name });
      const save = h('form', { class: 'inline', on: { submit: async (e) => {
        e.preventDefault();
        if (await act(() => api('PUT', `/api/agents/${enc(a.id)}`, { name: input.value }), 'Renamed')) { editing = false; refresh(); }
      } } }, input, h('button', { type: 'submit' }, 'Save'));
      editing = true; rename.replaceWith(save); input.focus();
    } } }, 'Rename');
    const providers = (a.providers || []).map((p) => `${p.name} (${p.type})`).join(', ') || '—';
    return h('tr', { 'data-agent': a.name },
      h('td', {}, a.name, h('div', { class: 'muted' }, a.description || '')),
      h('td', {}, badge(a.status)),
      h('td', {}, when(a.last_heartbeat)),
      h('td', {}, providers),
      h('td', {}, h('div', { class: 'actions' },
        confirmed('Token', `New token? ${a.name}'s current one stops working`, { 'data-action': 'token' }, () => token(a), hold),
        h('button', { type: 'button', class: 'secondary', on: { click: () => act(() => api('POST', `/api/agents/${enc(a.id)}/sync`, {}), `Sync of every provider of ${a.name} started`) } }, 'Sync'),
        rename,
        confirmed('Revoke token', `Really revoke ${a.name}'s token?`, { 'data-action': 'revoke' }, () => act(() => api('DELETE', `/api/auth/token/${enc(a.id)}`), `Token of ${a.name} revoked`), hold),
        del)));
  }
  async function refresh() {
    if (editing) return;
    const agents = await act(() => api('GET', '/api/agents/'));
    // A rename or confirmation may have started while the list was read.
    if (!agents || editing) return;
    body.replaceChildren(agents.length
      ? table(['Agent', 'Status', 'Last heartbeat', 'Providers', ''], agents.map(row), 'Agents')
      : h('p', { class: 'muted' }, 'No agents yet.'));
  }
  // While a row is being renamed or a deletion confirmed, the list is not
  // redrawn under the admin's hands.
  body.addEventListener('focusout', (e) => { if (!body.contains(e.relatedTarget)) editing = false; });
  main.append(h('h1', {}, 'Agents'), create, shown, body);
  every(2000, refresh);
}

// ---------- API providers (governance) ----------
function providersPage(main) {
  const body = h('div', {});
  const running = {};
  async function refresh() {
    const list = await act(() => api('GET', '/api/providers'));
    if (!list) return;
    body.replaceChildren(list.length ? table(['Provider', 'Agent', 'APIs', 'Last sync', ''], list.map((p) => {
      const key = `${p.agent_id}/${p.name}`;
      const last = p.last_sync;
      let sync;
      if (running[key] && (!last || last.run_id !== running[key])) sync = badge('running');
      else { delete running[key]; sync = last ? h('span', {}, badge(last.result), ` ${when(last.ended_at || last.started_at)}, ${last.count} APIs`, last.reason ? h('div', { class: 'muted' }, last.reason) : null) : 'never'; }
      return h('tr', { 'data-provider': p.name },
        h('td', {}, h('strong', {}, p.name), h('div', { class: 'muted' }, p.type)),
        h('td', {}, badge(p.agent_status), h('div', { class: 'muted' }, when(p.last_heartbeat))),
        h('td', {}, `${p.api_count} live`, h('div', { class: 'muted' }, `${p.deleted_count} deleted`)),
        h('td', { class: 'sync-state' }, sync),
        h('td', {}, h('button', { type: 'button', on: { click: async () => {
          const r = await act(() => api('POST', `/api/agents/${enc(p.agent_id)}/sync`, { provider: p.name }), `Sync of ${p.name} started`);
          if (r?.runs?.[0]) { running[key] = r.runs[0].run_id; refresh(); }
        } } }, `Sync ${p.name}`)));
    }), 'API providers') : h('p', { class: 'muted' }, 'No providers have reported yet.'));
  }
  main.append(h('h1', {}, 'API providers'), body);
  every(1500, refresh);
}

// ---------- API Repository ----------
function apisPage(main) {
  const f = { provider: '', status: 'active', q: '', page: 1 };
  const provider = h('input', { id: 'filter-provider' });
  const status = h('select', { id: 'filter-status' }, ['active', 'deleted', 'all'].map((s) => h('option', { value: s }, s)));
  const q = h('input', { id: 'filter-q', type: 'search' });
  const body = h('div', {});
  const filters = h('form', { class: 'inline card', 'aria-label': 'Filter APIs', on: { submit: (e) => {
    e.preventDefault(); Object.assign(f, { provider: provider.value, status: status.value, q: q.value, page: 1 }); refresh();
  } } }, field('Provider', provider), field('Status', status), field('Name contains', q), h('button', { type: 'submit' }, 'Filter'));
  async function refresh() {
    const qs = new URLSearchParams({ status: f.status, page: f.page, per_page: 20 });
    if (f.provider) qs.set('provider', f.provider);
    if (f.q) qs.set('q', f.q);
    const page = await act(() => api('GET', `/api/apis?${qs}`));
    if (!page) return;
    const pages = Math.max(1, Math.ceil(page.total / 20));
    body.replaceChildren(
      table(['Name', 'Version', 'Provider', 'Status', 'Last seen'], page.apis.map((a) => h('tr', { 'data-api': a.name },
        h('td', {}, h('a', { href: `#/api/${enc(a.id)}` }, a.name || a.provider_api_id)),
        h('td', {}, a.version), h('td', {}, a.provider), h('td', {}, badge(a.status)), h('td', {}, when(a.last_seen)))), 'APIs'),
      h('div', { class: 'pager' },
        h('button', { type: 'button', class: 'secondary', disabled: f.page <= 1, on: { click: () => { f.page -= 1; refresh(); } } }, 'Previous'),
        h('span', {}, `page ${f.page} of ${pages} (${page.total} APIs)`),
        h('button', { type: 'button', class: 'secondary', disabled: f.page >= pages, on: { click: () => { f.page += 1; refresh(); } } }, 'Next')));
  }
  main.append(h('h1', {}, 'API Repository'), filters, body);
  every(3000, refresh);
}

function openapiDoc(doc) {
  if (!doc) return h('p', { class: 'muted' }, 'The provider gave no OpenAPI document.');
  if (typeof doc === 'string') return h('pre', {}, doc);
  const info = doc.info || {};
  const out = [h('h2', {}, `${info.title || 'API'} ${info.version || ''}`)];
  if (info.description) out.push(h('p', {}, info.description));
  const servers = (doc.servers || []).map((s) => s.url);
  if (doc.host || doc.basePath) servers.push(`${doc.host || ''}${doc.basePath || ''}`);
  if (servers.length) out.push(h('p', {}, 'Servers: ', servers.join(', ')));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item || {})) {
      if (!['get', 'put', 'post', 'delete', 'patch', 'head', 'options'].includes(method)) continue;
      const params = (op.parameters || []).map((p) => h('li', {}, h('code', {}, p.name || p.$ref || ''), ` (${p.in || ''}${p.required ? ', required' : ''}) ${p.description || ''}`));
      const responses = Object.entries(op.responses || {}).map(([code, r]) => h('li', {}, h('code', {}, code), ` ${(r?.description) || ''}`));
      out.push(h('div', { class: 'op' },
        h('div', {}, h('span', { class: `method ${method}` }, method), ' ', h('code', {}, path)),
        op.summary || op.description ? h('p', {}, op.summary || op.description) : null,
        params.length ? h('div', {}, h('strong', {}, 'Parameters'), h('ul', {}, params)) : null,
        responses.length ? h('div', {}, h('strong', {}, 'Responses'), h('ul', {}, responses)) : null));
    }
  }
  return h('section', { 'aria-label': 'API documentation' }, out);
}

async function apiPage(main, id) {
  const a = await act(() => api('GET', `/api/apis/${enc(id)}`));
  if (!a) return;
  const d = a.definition || {};
  main.append(
    h('p', {}, h('a', { href: '#/apis' }, '← API Repository')),
    h('h1', {}, a.name, ' ', badge(a.status)),
    h('div', { class: 'card' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Version'), h('dd', {}, a.version || '—'),
      h('dt', {}, 'Provider'), h('dd', {}, a.provider),
      h('dt', {}, 'Provider id'), h('dd', {}, a.provider_api_id),
      h('dt', {}, 'Path'), h('dd', {}, d.base_path || '—'),
      h('dt', {}, 'Upstream'), h('dd', {}, d.upstream_url || '—'),
      h('dt', {}, 'Authentication'), h('dd', {}, (d.auth_methods || []).join(', ') || '—'),
      h('dt', {}, 'First seen'), h('dd', {}, when(a.first_seen)),
      h('dt', {}, 'Last seen'), h('dd', {}, when(a.last_seen)),
      h('dt', {}, 'Deleted at'), h('dd', {}, a.deleted_at ? when(a.deleted_at) : '—'))),
    h('h2', {}, 'Lifecycle'),
    table(['Change', 'When', 'Fields'], (a.history || []).map((e) => h('tr', {}, h('td', {}, badge(e.kind)), h('td', {}, when(e.at)), h('td', {}, (e.changed || []).join(', ')))), 'Lifecycle history'),
    h('h2', {}, 'Documentation'),
    openapiDoc(d.openapi),
    h('details', {}, h('summary', {}, 'Definition as the provider returned it'), h('pre', {}, JSON.stringify(d.raw, null, 2))));
}

// ---------- Sync jobs ----------
async function jobsPage(main) {
  const agents = await act(() => api('GET', '/api/agents/'));
  if (!agents) return;
  const pick = h('select', { id: 'job-agent' }, agents.map((a) => h('option', { value: a.id }, a.name)));
  const provider = h('input', { id: 'job-provider', required: true });
  const every_ = h('input', { id: 'job-every', placeholder: '12h', required: true });
  const start = h('input', { id: 'job-start', placeholder: 'now, or 2026-12-01T00:00:00Z' });
  const body = h('div', {});
  const history = h('div', {});
  const form = h('form', { class: 'inline card', 'aria-label': 'New sync job', on: { submit: async (e) => {
    e.preventDefault();
    const job = { provider: provider.value, repeat_every: every_.value };
    if (start.value) job.start_from = start.value;
    if (await act(() => api('POST', `/api/agents/${enc(pick.value)}/sync-jobs`, job), 'Sync job created')) refresh();
  } } }, field('Agent', pick), field('Provider', provider), field('Repeat every', every_), field('Start from', start), h('button', { type: 'submit' }, 'Create job'));
  async function showRuns(job) {
    const runs = await act(() => api('GET', `/api/agents/${enc(pick.value)}/sync-jobs/${enc(job.id)}/runs`));
    if (!runs) return;
    history.replaceChildren(h('h2', {}, `Runs of ${job.provider} every ${job.repeat_every}`),
      table(['Due', 'Fired', 'Late', 'Status', 'Results'], runs.map((r) => h('tr', {},
        h('td', {}, when(r.due_at)), h('td', {}, when(r.fired_at)), h('td', {}, `${r.late_ms} ms`), h('td', {}, badge(r.status)),
        h('td', {}, (r.runs || []).map((x) => `${x.provider}: ${x.status}${x.count !== undefined && x.count !== null ? ` (${x.count})` : ''}`).join('; ')))), 'Runs'));
  }
  async function refresh() {
    if (!pick.value) { body.replaceChildren(h('p', { class: 'muted' }, 'No agents yet.')); return; }
    const jobs = await act(() => api('GET', `/api/agents/${enc(pick.value)}/sync-jobs`));
    if (!jobs) return;
    body.replaceChildren(jobs.length ? table(['Provider', 'Every', 'Next run', 'State', ''], jobs.map((j) => h('tr', { 'data-job': j.provider },
      h('td', {}, j.provider), h('td', {}, j.repeat_every), h('td', {}, when(j.next_run_at)), h('td', {}, badge(j.paused ? 'paused' : 'active')),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', on: { click: async () => { if (await act(() => api('PUT', `/api/agents/${enc(pick.value)}/sync-jobs/${enc(j.id)}`, { paused: !j.paused }))) refresh(); } } }, j.paused ? 'Resume' : 'Pause'),
        h('button', { type: 'button', class: 'secondary', on: { click: () => showRuns(j) } }, 'Runs'),
        h('button', { type: 'button', class: 'danger', on: { click: async () => { if (await act(() => api('DELETE', `/api/agents/${enc(pick.value)}/sync-jobs/${enc(j.id)}`), 'Sync job deleted') !== undefined) refresh(); } } }, 'Delete'))))), 'Sync jobs')
      : h('p', { class: 'muted' }, 'No sync jobs for this agent.'));
  }
  pick.addEventListener('change', refresh);
  main.append(h('h1', {}, 'Sync jobs'), form, body, history);
  refresh();
}

// ---------- Events ----------
function eventsPage(main) {
  const type = h('select', { id: 'event-type' }, ['', 'created', 'updated', 'deleted', 'restored', 'status_changed'].map((t) => h('option', { value: t }, t || 'any')));
  const provider = h('input', { id: 'event-provider' });
  const list = h('tbody', {});
  let after = null;
  // A filter change starts a new listing; an answer to the old one is
  // dropped. Polls run one after another (see `every`), and a filter's
  // first poll waits for the one under way.
  let listing = 0;
  let running = Promise.resolve();
  const form = h('form', { class: 'inline card', 'aria-label': 'Filter events', on: { submit: (e) => { e.preventDefault(); listing += 1; after = null; list.replaceChildren(); poll(); } } },
    field('Type', type), field('Provider', provider), h('button', { type: 'submit' }, 'Filter'));
  function poll() {
    running = running.then(pollOnce, pollOnce);
    return running;
  }
  async function pollOnce() {
    const asked = listing;
    const qs = new URLSearchParams({ limit: 100 });
    if (type.value) qs.set('type', type.value);
    if (provider.value) qs.set('provider', provider.value);
    if (after !== null) qs.set('after', after); else qs.set('since', '7d');
    const page = await act(() => api('GET', `/api/events?${qs}`));
    if (!page || asked !== listing) return;
    after = page.next_after;
    for (const e of page.events) {
      const d = e.data || {};
      list.prepend(h('tr', { 'data-event': e.type },
        h('td', {}, when(e.time)), h('td', {}, badge(e.type.split('.').pop())), h('td', {}, e.type),
        h('td', {}, d.name || d.agent_id || e.subject), h('td', {}, d.provider || d.status || '')));
    }
  }
  main.append(h('h1', {}, 'Events'), form,
    h('div', { class: 'table-wrap' }, h('table', { 'aria-label': 'Events' },
      h('thead', {}, h('tr', {}, ['When', 'Kind', 'Type', 'About', 'Provider / status'].map((t) => h('th', { scope: 'col', text: t })))), list)));
  every(2000, poll);
}

// ---------- Keys and policies ----------
// A key's quota as the gateways count it: what is left of how much, and when it renews.
function quotaLeft(e) {
  if (!e) return '—';
  if (!(e.quota_max > 0)) return 'unlimited';
  const renews = e.quota_renews * 1000 > Date.now() ? `renews ${when(new Date(e.quota_renews * 1000).toISOString())}`
    : e.quota_renewal_rate > 0 ? 'a period starts with its next request' : 'never renews';
  return h('span', {}, `${Math.max(e.quota_remaining, 0)} of ${e.quota_max}`, h('div', { class: 'muted' }, renews));
}

async function keysPage(main) {
  const shown = h('div', {});
  const policiesBox = h('div', {});
  const keysBox = h('div', {});
  const pid = h('input', { id: 'policy-id', required: true });
  const pname = h('input', { id: 'policy-name' });
  const rate = h('input', { id: 'policy-rate', type: 'number', value: '100', min: '0' });
  const per = h('input', { id: 'policy-per', type: 'number', value: '60', min: '0' });
  const quota = h('input', { id: 'policy-quota', type: 'number', value: '-1', min: '-1' });
  const apis = h('input', { id: 'policy-apis', placeholder: 'api-1,api-2' });
  const tags = h('input', { id: 'policy-tags', placeholder: 'portal' });
  let policies = [];
  const policyForm = h('form', { class: 'inline card', 'aria-label': 'Policy', on: { submit: async (e) => {
    e.preventDefault();
    const rights = {};
    for (const id of apis.value.split(',').map((s) => s.trim()).filter(Boolean)) rights[id] = { api_id: id, versions: ['Default'] };
    const body = { id: pid.value, name: pname.value || pid.value, rate: Number(rate.value), per: Number(per.value), quota_max: Number(quota.value), quota_renewal_rate: Number(quota.value) > 0 ? 86400 : 0, access_rights: rights, tags: tags.value ? tags.value.split(',') : [], active: true };
    const exists = policies.some((p) => p.id === pid.value);
    if (await act(() => exists ? api('PUT', `/tyk/policies/${enc(pid.value)}`, body) : api('POST', '/tyk/policies', body), exists ? 'Policy saved' : 'Policy created')) refresh();
  } } }, field('Policy id', pid), field('Name', pname), field('Rate', rate), field('Per (s)', per), field('Quota (-1: none)', quota), field('API ids', apis), field('Tags', tags), h('button', { type: 'submit' }, 'Save policy'));
  const alias = h('input', { id: 'key-alias' });
  const applies = h('select', { id: 'key-policies', multiple: true, size: 3 });
  const keyForm = h('form', { class: 'inline card', 'aria-label': 'New key', on: { submit: async (e) => {
    e.preventDefault();
    const chosen = [...applies.selectedOptions].map((o) => o.value);
    const k = await act(() => api('POST', '/tyk/keys', { alias: alias.value, apply_policies: chosen }), 'Key created');
    if (k) { shown.replaceChildren(secret(k.key, 'Key')); refresh(); }
  } } }, field('Alias', alias), field('Policies applied', applies), h('button', { type: 'submit' }, 'Create key'));
  async function refresh() {
    policies = (await act(() => api('GET', '/tyk/policies'))) || [];
    applies.replaceChildren(...policies.map((p) => h('option', { value: p.id }, p.name || p.id)));
    policiesBox.replaceChildren(table(['Policy', 'Rate', 'Quota', 'APIs', 'Tags', ''], policies.map((p) => h('tr', { 'data-policy': p.id },
      h('td', {}, h('strong', {}, p.id), h('div', { class: 'muted' }, p.name)), h('td', {}, p.rate ? `${p.rate} / ${p.per}s` : '—'),
      h('td', {}, p.quota_max < 0 ? 'unlimited' : String(p.quota_max)), h('td', {}, Object.keys(p.access_rights || {}).join(', ') || '—'),
      h('td', {}, (p.tags || []).join(', ')),
      h('td', {}, h('button', { type: 'button', class: 'secondary', on: { click: () => {
        pid.value = p.id; pname.value = p.name; rate.value = p.rate; per.value = p.per; quota.value = p.quota_max;
        apis.value = Object.keys(p.access_rights || {}).join(','); tags.value = (p.tags || []).join(','); pid.focus();
      } } }, 'Edit')))), 'Policies'));
    // Every key as stored (it is written back below) and its quota as the
    // gateways count it, in one call.
    const keys = await act(() => api('GET', '/tyk/keys?sessions=true'));
    if (!keys) return;
    const rows = [];
    for (const { key_hash: hash, session: s, quota } of keys.sessions || []) {
      rows.push(h('tr', { 'data-key': s.alias || hash },
        h('td', {}, h('code', {}, `${hash.slice(0, 16)}…`), h('div', { class: 'muted' }, s.alias || '')),
        h('td', {}, (s.apply_policies || []).join(', ') || '—'),
        h('td', { class: 'quota' }, quotaLeft(quota)),
        h('td', {}, badge(s.is_inactive ? 'inactive' : 'active')),
        h('td', {}, h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', on: { click: async () => {
            s.is_inactive = !s.is_inactive;
            if (await act(() => api('PUT', `/tyk/keys/${enc(hash)}?hashed=true&suppress_reset=1`, s), s.is_inactive ? 'Key inactivated' : 'Key activated')) refresh();
          } } }, s.is_inactive ? 'Activate' : 'Inactivate'),
          confirmed('Delete', 'Really delete this key?', { 'data-action': 'delete-key' }, async () => { if (await act(() => api('DELETE', `/tyk/keys/${enc(hash)}?hashed=true`), 'Key deleted')) refresh(); })))));
    }
    keysBox.replaceChildren(rows.length ? table(['Key (hash)', 'Policies', 'Quota left', 'State', ''], rows, 'Keys') : h('p', { class: 'muted' }, 'No keys.'));
  }
  main.append(h('h1', {}, 'Keys and policies'), h('h2', {}, 'Policies'), policyForm, policiesBox, h('h2', {}, 'Keys'), keyForm, shown, keysBox);
  refresh();
}

// ---------- Gateway ----------
// The middleware a gateway API definition turns on, by the names the docs use.
function middlewareOf(d) {
  const some = (o, names) => names.some((n) => { const x = o?.[n]; return x && (Array.isArray(x) ? x.length : Object.keys(x).length); });
  const versions = Object.values(d.version_data?.versions || {});
  const on = [];
  if (d.use_oauth2) on.push('OAuth 2.0');
  if (d.CORS?.enable) on.push('CORS');
  if (d.cache_options?.enable_cache) on.push('cache');
  if (d.enable_batch_request_support) on.push('batch requests');
  if (versions.some((v) => some(v, ['global_headers', 'global_headers_remove', 'global_response_headers', 'global_response_headers_remove'])
    || some(v.extended_paths, ['transform_headers', 'transform_response_headers']))
    || (d.response_processors || []).some((p) => p.name === 'header_injector')) on.push('header injection');
  return on;
}

function gatewayPage(main, apiId) {
  const apisBox = h('div', {});
  const clientsBox = h('div', { id: 'oauth-clients' });
  const tokensBox = h('div', { id: 'oauth-tokens' });
  const opsBox = h('div', { id: 'oas-operations' });
  const auth = (d) => (d.use_keyless ? 'keyless' : (d.use_oauth2 ? 'OAuth 2.0 tokens (or keys)' : 'key'));
  // Import: a plain OpenAPI document (JSON), pasted or read from a file.
  const docText = h('textarea', { id: 'oas-document', rows: 6, placeholder: '{"openapi": "3.0.3", ...}' });
  const docFile = h('input', { type: 'file', id: 'oas-file', accept: '.json,application/json', on: { change: async () => {
    const f = docFile.files[0];
    if (f) docText.value = await f.text();
  } } });
  const listen = h('input', { id: 'oas-listen-path', placeholder: '/pets/' });
  const upstream = h('input', { id: 'oas-upstream', placeholder: 'http://pets.internal:8080 (default: the first server)' });
  const keyed = h('input', { type: 'checkbox', id: 'oas-auth', checked: true });
  const importForm = h('form', { class: 'inline card', 'aria-label': 'Import an OpenAPI document', on: { submit: async (e) => {
    e.preventDefault();
    let doc;
    try { doc = JSON.parse(docText.value); } catch (err) { say(`The document is not JSON: ${err.message}`); return; }
    const qs = new URLSearchParams({ authentication: keyed.checked ? 'true' : 'false' });
    if (listen.value) qs.set('listenPath', listen.value);
    if (upstream.value) qs.set('upstreamURL', upstream.value);
    const out = await act(() => api('POST', `/tyk/apis/oas/import?${qs}`, doc));
    if (out) { state.flash = `API imported: ${out.key}, live on every gateway replica`; location.hash = `#/gateway/${enc(out.key)}`; }
  } } }, field('OpenAPI document (JSON)', docText), field('or a file', docFile), field('Listen path', listen), field('Upstream URL', upstream),
  field('Check its security scheme', keyed), h('button', { type: 'submit' }, 'Import'));
  async function refresh() {
    const [apis, docs] = await Promise.all([act(() => api('GET', '/tyk/apis')), act(() => api('GET', '/tyk/apis/oas'))]);
    if (!apis) return;
    const oas = new Set((docs || []).map((d) => d['x-tyk-api-gateway']?.info?.id));
    // An OAS API's operation rules, which the classic form does not show.
    const opRules = Object.fromEntries((docs || []).map((d) => [d['x-tyk-api-gateway']?.info?.id,
      Object.keys(d['x-tyk-api-gateway']?.middleware?.operations || {}).length]));
    const onOf = (d) => [...middlewareOf(d), ...(opRules[d.api_id] ? [`operation rules (${opRules[d.api_id]})`] : [])];
    apisBox.replaceChildren(apis.length ? table(['API', 'Format', 'Listen path', 'Authentication', 'Middleware on', 'State', ''], apis.map((d) => h('tr', { 'data-gateway-api': d.api_id },
      h('td', {}, h('strong', {}, d.name || d.api_id), h('div', { class: 'muted' }, d.api_id)),
      h('td', {}, oas.has(d.api_id) ? 'Tyk OAS' : 'classic'),
      h('td', {}, h('code', {}, d.proxy?.listen_path || '')),
      h('td', {}, auth(d)),
      h('td', { class: 'middleware' }, onOf(d).join(', ') || '—'),
      h('td', {}, badge(d.active === false ? 'inactive' : 'active')),
      h('td', {}, (d.use_oauth2 || oas.has(d.api_id)) ? h('a', { href: `#/gateway/${enc(d.api_id)}` }, oas.has(d.api_id) ? 'Details' : 'OAuth clients') : ''))), 'Gateway APIs')
      : h('p', { class: 'muted' }, 'No APIs on the gateway.'));
  }
  // An OAS API's operations and the middleware each has; its export.
  async function operations(id) {
    const doc = await api('GET', `/tyk/apis/oas/${enc(id)}`).catch(() => null);
    if (!doc) { opsBox.replaceChildren(); return; }
    const ops = doc['x-tyk-api-gateway']?.middleware?.operations || {};
    const rows = [];
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item || {})) {
        if (!['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'].includes(method)) continue;
        const on = Object.entries(ops[op.operationId] || {}).filter(([, v]) => v?.enabled).map(([k]) => k);
        rows.push(h('tr', { 'data-operation': op.operationId || `${method} ${path}` },
          h('td', {}, h('span', { class: `method ${method}` }, method), ' ', h('code', {}, path)),
          h('td', {}, op.operationId || '—', h('div', { class: 'muted' }, op.summary || '')),
          h('td', { class: 'operation-middleware' }, on.join(', ') || '—')));
      }
    }
    // The export is fetched, then offered as a link to save.
    const saved = h('span', { id: 'oas-exported' });
    const exportButton = h('button', { type: 'button', class: 'secondary', id: 'oas-export', on: { click: async () => {
      const file = await act(() => api('GET', `/tyk/apis/oas/${enc(id)}/export`));
      if (!file) return;
      const href = URL.createObjectURL(new Blob([JSON.stringify(file, null, 2)], { type: 'application/json' }));
      saved.replaceChildren(' ', h('a', { href, download: `${id}.json`, id: 'oas-download' }, `Save ${id}.json`));
      say(`Exported ${id}.json`, true);
    } } }, 'Export the document');
    opsBox.replaceChildren(h('h2', {}, `Operations of ${doc.info?.title || id}`), h('p', {}, exportButton, saved),
      rows.length ? table(['Operation', 'operationId', 'Middleware on'], rows, 'Operations') : h('p', { class: 'muted' }, 'The document has no operations.'));
  }
  async function tokens(id, clientId) {
    const list = await act(() => api('GET', `/tyk/oauth/clients/${enc(id)}/${enc(clientId)}/tokens`));
    if (!list) return;
    const expires = (s) => new Date(s * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    tokensBox.replaceChildren(h('h2', {}, `Live tokens of ${clientId}`), list.length ? table(['Token (SHA-256)', 'Expires', ''], list.map((t) => h('tr', { 'data-token': t.code },
      h('td', {}, h('code', {}, t.code)), h('td', {}, expires(t.expires)),
      h('td', {}, confirmed('Revoke', 'Really revoke this token?', { 'data-action': 'revoke-token' }, async () => {
        if (await act(() => api('DELETE', `/api/keys/oauth/tokens/${enc(t.code)}`), 'Token revoked: every gateway replica refuses it') !== undefined) tokens(id, clientId);
      })))), 'Tokens') : h('p', { class: 'muted' }, 'No live tokens.'));
  }
  async function clients(id) {
    const list = await act(() => api('GET', `/tyk/oauth/clients/${enc(id)}`));
    if (!list) return;
    clientsBox.replaceChildren(h('h2', {}, `OAuth clients of ${id}`), list.length ? table(['Client', 'Policy', 'Redirect URI', ''], list.map((c) => h('tr', { 'data-client': c.client_id },
      h('td', {}, h('code', {}, c.client_id), h('div', { class: 'muted' }, c.description || '')),
      h('td', {}, c.policy_id || '—'), h('td', {}, c.redirect_uri || '—'),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', 'data-action': 'tokens', on: { click: () => tokens(id, c.client_id) } }, 'Tokens'),
        confirmed('Delete', `Really delete ${c.client_id}? Its tokens stop working`, { 'data-action': 'delete-client' }, async () => {
          if (await act(() => api('DELETE', `/tyk/oauth/clients/${enc(id)}/${enc(c.client_id)}`), 'Client deleted: its tokens no longer work') !== undefined) { tokensBox.replaceChildren(); clients(id); }
        }))))), 'OAuth clients') : h('p', { class: 'muted' }, 'No OAuth clients for this API.'));
  }
  main.append(h('h1', {}, 'Gateway'), apisBox, h('h2', {}, 'Import an OpenAPI document'), importForm, opsBox, clientsBox, tokensBox);
  refresh();
  if (apiId) {
    operations(apiId);
    api('GET', `/tyk/apis/${enc(apiId)}`).then((d) => { if (d?.use_oauth2) clients(apiId); }).catch((e) => say(e.message));
  }
}

// ---------- Developer portal ----------
async function portalPage(main) {
  const report = h('div', { id: 'sync-report' });
  const shown = h('div', {});
  const boxes = { providers: h('div', {}), products: h('div', {}), plans: h('div', {}), requests: h('div', {}) };
  function showReport(r) {
    if (!r) return;
    report.replaceChildren(h('h2', {}, 'Synchronisation report'), table(['Provider', 'Result', 'New', 'Updated', 'Hidden', 'Restored'], r.providers.map((p) => h('tr', { 'data-report': p.name },
      h('td', {}, p.name), h('td', {}, badge(p.status), p.reason ? h('div', { class: 'muted' }, p.reason) : null),
      h('td', {}, p.new), h('td', {}, p.updated), h('td', {}, p.hidden), h('td', {}, p.restored))), 'Synchronisation report'));
    refresh();
  }
  const toggle = (kind, item) => h('button', { type: 'button', class: 'secondary', disabled: item.hidden, on: { click: async () => {
    if (await act(() => api('PUT', `/portal-api/${enc(kind)}/${enc(item.id)}`, { published: !item.published }), item.published ? 'Unpublished' : 'Published')) refresh();
  } } }, item.published ? 'Unpublish' : 'Publish');
  const state_ = (item) => [badge(item.hidden ? 'hidden' : (item.published ? 'published' : 'draft'))];
  async function refresh() {
    const [providers, products, plans, requests] = await Promise.all([
      act(() => api('GET', '/portal-api/providers')), act(() => api('GET', '/portal-api/products?hidden=true')),
      act(() => api('GET', '/portal-api/plans?hidden=true')), act(() => api('GET', '/portal-api/provisioning-requests'))]);
    if (providers) boxes.providers.replaceChildren(table(['Provider', 'Type', 'Tags', 'Last sync', ''], providers.map((p) => h('tr', { 'data-portal-provider': p.name },
      h('td', {}, p.name, h('div', { class: 'muted' }, p.url)), h('td', {}, p.type), h('td', {}, p.policy_tags),
      h('td', {}, p.last_sync ? [badge(p.last_sync.status), ` ${when(p.last_sync.finished_at)}`] : 'never'),
      h('td', {}, h('button', { type: 'button', on: { click: async () => showReport(await act(() => api('PUT', `/portal-api/providers/${enc(p.id)}/synchronize`))) } }, `Synchronize ${p.name}`)))), 'Portal providers'));
    if (products) boxes.products.replaceChildren(table(['Product', 'APIs', 'State', ''], products.map((p) => h('tr', { 'data-product': p.name },
      h('td', {}, p.name, h('div', { class: 'muted' }, `policy ${p.policy_id}`)), h('td', {}, (p.apis || []).map((a) => a.api_name || a.api_id).join(', ')),
      h('td', {}, state_(p)), h('td', {}, toggle('products', p)))), 'Products'));
    if (plans) boxes.plans.replaceChildren(table(['Plan', 'Limits', 'State', ''], plans.map((p) => h('tr', { 'data-plan': p.name },
      h('td', {}, p.name, p.auto_approve ? h('div', { class: 'muted' }, 'approves automatically') : null),
      h('td', {}, p.rate ? `${p.rate} / ${p.per}s` : '—', p.quota_max > 0 ? `, ${p.quota_max} per ${p.quota_renewal_rate}s` : ''),
      h('td', {}, state_(p)), h('td', {}, toggle('plans', p)))), 'Plans'));
    if (requests) {
      const names = (list, id) => (list || []).find((x) => x.id === id)?.name || id;
      boxes.requests.replaceChildren(requests.length ? table(['Request', 'Product', 'Plan', 'State', ''], requests.map((r) => h('tr', { 'data-request': r.id },
        h('td', {}, when(r.created_at), h('div', { class: 'muted' }, `app ${r.app_id}`)), h('td', {}, names(products, r.product_id)), h('td', {}, names(plans, r.plan_id)),
        h('td', {}, badge(r.status), r.reason ? h('div', { class: 'muted' }, r.reason) : null),
        h('td', {}, r.status === 'pending' ? h('div', { class: 'actions' },
          h('button', { type: 'button', on: { click: async () => {
            const out = await act(() => api('PUT', `/portal-api/provisioning-requests/${enc(r.id)}/approve`), 'Approved: the credential was issued');
            if (out) { shown.replaceChildren(secret(out.key, 'Credential key')); refresh(); }
          } } }, 'Approve'),
          h('button', { type: 'button', class: 'danger', on: { click: async () => { if (await act(() => api('PUT', `/portal-api/provisioning-requests/${enc(r.id)}/reject`, { reason: 'rejected in the console' }), 'Rejected')) refresh(); } } }, 'Reject')) : ''))), 'Provisioning requests')
        : h('p', { class: 'muted' }, 'No provisioning requests.'));
    }
  }
  main.append(h('h1', {}, 'Developer portal'),
    h('div', { class: 'actions' }, h('button', { type: 'button', id: 'sync-all', on: { click: async () => showReport(await act(() => api('PUT', '/portal-api/providers/synchronize'))) } }, 'Synchronize all providers')),
    report, h('h2', {}, 'Providers'), boxes.providers, h('h2', {}, 'Products'), boxes.products, h('h2', {}, 'Plans'), boxes.plans,
    h('h2', {}, 'Provisioning requests'), shown, boxes.requests);
  refresh();
}

const pages = { agents: agentsPage, providers: providersPage, apis: apisPage, api: apiPage, jobs: jobsPage, events: eventsPage, keys: keysPage, gateway: gatewayPage, portal: portalPage };

function render() {
  state.generation += 1;
  for (const t of state.timers) clearTimeout(t);
  state.timers = [];
  const main = document.getElementById('main');
  // Each page draws into a view of its own: what an earlier page appends
  // when its answers come late goes to a view no longer shown, so two
  // pages never mix.
  const view = h('div', { class: 'view' });
  main.replaceChildren(view);
  if (!state.csrf) { view.append(...signIn()); document.getElementById('admin-key').focus(); return; }
  document.getElementById('nav').hidden = false;
  const [name, raw] = location.hash.replace(/^#\//, '').split('/');
  let arg = raw;
  try { arg = raw && decodeURIComponent(raw); } catch (_) { /* a malformed hash: as typed */ }
  const page = pages[name] || agentsPage;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#/${name === 'api' ? 'apis' : name}`) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  // A message left for the page an action moved to (`state.flash`).
  say(state.flash || '', true);
  state.flash = null;
  page(view, arg);
  main.focus();
}

document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signout').addEventListener('click', async () => {
    await fetch('/console/logout', { method: 'POST', credentials: 'same-origin' });
    say('Signed out', true);
    signedOut();
  });
  window.addEventListener('hashchange', render);
  try {
    const res = await fetch('/console/session', { credentials: 'same-origin' });
    if (res.ok) { const s = await res.json(); state.csrf = s.csrf; state.agentUrl = s.agent_url || ''; }
  } catch (_) { /* not signed in */ }
  render();
});
