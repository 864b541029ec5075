// The operator console's script. Renders only with textContent (never innerHTML), talks only to
// its own origin, keeps the admin token in sessionStorage (this tab only), and sends the page's
// anti-CSRF value with every action.
'use strict';

const TOKEN_KEY = 'openim-gateway-console-token';
const EVERY_MS = 2000;
let csrf = null;
let timer = null;
let summary = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h['Authorization'] = 'Bearer ' + token;
  return h;
}

async function getJson(path) {
  const r = await fetch(path, { headers: headers(), credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 401) throw new Error('unauthorized');
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  return r.json();
}

function showLogin(message) {
  if (timer) { clearInterval(timer); timer = null; }
  $('main').hidden = true;
  $('reload').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('status').textContent = '';
  $('token').focus();
}

async function start() {
  try {
    const s = await getJson('/admin/console/session');
    csrf = s.csrf;
  } catch (e) {
    if (e.message === 'unauthorized') {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(had ? 'That token was refused.' : '');
    } else {
      showLogin('The gateway does not answer: ' + e.message);
    }
    return;
  }
  $('login').hidden = true;
  $('login-error').textContent = '';
  $('main').hidden = false;
  await refresh();
  if (!timer) timer = setInterval(refresh, EVERY_MS);
}

function fmt(n, digits) {
  if (n === null || n === undefined) return '–';
  return Number(n).toFixed(digits === undefined ? 0 : digits);
}

function age(ms) {
  if (ms === null || ms === undefined) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}

const BAD_OUTCOMES = ['failed-open', 'failed-closed', 'spool-full', 'bad-input', 'unknown-command'];

function renderCommands(list, windowS) {
  $('window').textContent = 'rates, outcomes and latency over the last ' + windowS + ' s';
  const showUnseen = $('show-unseen').checked;
  const body = $('commands').tBodies[0];
  const rows = [];
  const names = $('command-names');
  const options = [];
  for (const c of list) {
    if (c.phase === 'after') options.push(el('option', c.command));
    if (c.never_seen && !showUnseen) continue;
    const tr = el('tr', null, c.never_seen ? 'unseen' : '');
    tr.dataset.command = c.command;
    tr.appendChild(el('td', c.command, 'mono'));
    tr.appendChild(el('td', c.total, 'num'));
    tr.appendChild(el('td', c.last_minute ? fmt(c.per_second, 2) : '–', 'num'));
    const out = el('td');
    for (const [k, v] of Object.entries(c.outcomes || {})) {
      out.appendChild(el('span', k + ' ' + v, 'tag' + (BAD_OUTCOMES.includes(k) ? ' bad' : '')));
    }
    if (c.never_seen) out.textContent = 'never seen';
    tr.appendChild(out);
    tr.appendChild(el('td', c.last_minute ? fmt(c.p50_ms, 1) : '–', 'num'));
    tr.appendChild(el('td', c.last_minute ? fmt(c.p99_ms, 1) : '–', 'num'));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  names.replaceChildren(...options);
}

function renderUpstreams(list) {
  const rows = list.map((u) => {
    const tr = el('tr');
    tr.dataset.upstream = u.name;
    tr.appendChild(el('td', u.name, 'mono'));
    const state = u.up === false ? 'down' : (u.checked ? 'up' : 'not checked');
    tr.appendChild(el('td', state, u.up === false ? 'badcell state' : 'state'));
    tr.appendChild(el('td', u.breaker, u.breaker === 'closed' ? '' : 'badcell'));
    tr.appendChild(el('td', u.in_flight, 'num'));
    tr.appendChild(el('td', u.calls_last_minute, 'num'));
    const rate = u.error_rate === null ? '–' : fmt(u.error_rate * 100, 1) + ' %';
    tr.appendChild(el('td', rate, 'num' + (u.error_rate ? ' bad' : '')));
    const members = el('td', null, 'wrap');
    for (const m of u.members || []) {
      const ok = m.connected && m.in_rotation && (m.health === null || m.health === 'SERVING');
      const text = m.address + (m.health ? ' ' + m.health : '') + (m.in_rotation ? '' : ' (out of rotation)');
      members.appendChild(el('div', text, 'mono' + (ok ? '' : ' bad')));
    }
    tr.appendChild(members);
    return tr;
  });
  $('upstreams').tBodies[0].replaceChildren(...rows);
}

function renderSpool(s) {
  const body = $('spool').tBodies[0];
  if (!s) {
    body.replaceChildren(kv('spool', 'none (no command uses delivery: spool)', 'spool-backend'));
    return;
  }
  if (s.error) {
    body.replaceChildren(kv('backend', s.backend, 'spool-backend'), kv('error', s.error, 'spool-error', true));
    return;
  }
  body.replaceChildren(
    kv('backend', s.backend, 'spool-backend'),
    kv('pending', s.pending, 'spool-pending'),
    kv('in flight', s.in_flight, 'spool-in-flight'),
    kv('retrying', s.retrying, 'spool-retrying', s.retrying > 0),
    kv('dead letters', s.dead, 'spool-dead', s.dead > 0),
    kv('oldest pending', age(s.oldest_pending_age_ms), 'spool-oldest', s.oldest_pending_age_ms > 60000),
    kv('delivered per s', s.delivered_per_second === null || s.delivered_per_second === undefined ? '–' : fmt(s.delivered_per_second, 2), 'spool-rate'),
    kv('bytes', s.bytes, 'spool-bytes'),
  );
}

function kv(name, value, id, bad) {
  const tr = el('tr');
  tr.appendChild(el('th', name));
  const td = el('td', value, bad ? 'badcell' : '');
  td.id = id;
  tr.appendChild(td);
  return tr;
}

// `attempts`: a dead letter's attempt history, shown as a table above the JSON (text only).
function showDetail(title, value, attempts) {
  $('detail-title').textContent = title;
  const list = attempts || [];
  $('detail-attempts-box').hidden = list.length === 0;
  $('detail-attempts').tBodies[0].replaceChildren(...list.map((a) => {
    const tr = el('tr');
    tr.appendChild(el('td', a.number, 'num'));
    tr.appendChild(el('td', new Date(a.at_ms).toISOString().replace('T', ' ').replace('Z', ''), 'mono'));
    tr.appendChild(el('td', a.code, 'mono bad'));
    tr.appendChild(el('td', a.message, 'wrap'));
    return tr;
  }));
  $('detail-body').textContent = JSON.stringify(value, null, 2);
  $('detail').showModal();
}

function renderDead(d) {
  $('dead-count').textContent = d.spool ? d.total + ' in the spool' + (d.total > d.letters.length ? ', the oldest ' + d.letters.length + ' shown' : '') : 'no spool';
  $('dead-actions').hidden = !d.spool;
  const rows = d.letters.map((x) => {
    const tr = el('tr', null, 'clickable');
    tr.dataset.id = x.id;
    tr.appendChild(el('td', x.id, 'num'));
    tr.appendChild(el('td', x.command, 'mono'));
    tr.appendChild(el('td', x.operation_id, 'mono'));
    tr.appendChild(el('td', age(x.age_ms), 'num'));
    tr.appendChild(el('td', x.attempts, 'num'));
    tr.appendChild(el('td', x.grpc_status || '', x.grpc_status ? 'bad' : ''));
    tr.appendChild(el('td', x.last_error || '', 'wrap'));
    const actions = el('td');
    const b = el('button', 'Replay…');
    b.type = 'button';
    b.className = 'replay-one';
    b.dataset.id = x.id;
    b.addEventListener('click', (ev) => {
      ev.stopPropagation();
      confirmAction('Replay dead letter ' + x.id + ' (' + x.command + ', operation id ' + x.operation_id +
        ')? It moves back to pending with its attempts reset, and the gateway delivers it again with the same delivery id ' + x.delivery_id + '.',
        '/admin/console/replay?id=' + encodeURIComponent(x.id));
    });
    actions.appendChild(b);
    tr.appendChild(actions);
    tr.addEventListener('click', () => showDetail('Dead letter ' + x.id + ' · ' + x.command, {
      id: x.id, delivery_id: x.delivery_id, command: x.command, operation_id: x.operation_id,
      order_key: x.order_key, attempts: x.attempts, first_stored: new Date(x.first_seen_ms).toISOString(),
      grpc_status: x.grpc_status, last_error: x.last_error,
      payload: x.payload, payload_error: x.payload_error || undefined,
    }, x.history));
    return tr;
  });
  if (rows.length === 0) {
    const td = el('td', d.spool ? 'no dead letters' : 'no spool: no command uses delivery: spool', 'muted');
    td.colSpan = 8;
    const tr = el('tr', null, 'empty');
    tr.appendChild(td);
    rows.push(tr);
  }
  $('dead').tBodies[0].replaceChildren(...rows);
}

function renderRecent(list) {
  const rows = list.map((r) => {
    const tr = el('tr', null, 'clickable');
    tr.dataset.seq = r.seq;
    tr.appendChild(el('td', r.time.replace('T', ' ').replace('Z', ''), 'mono'));
    tr.appendChild(el('td', r.command, 'mono'));
    tr.appendChild(el('td', r.route));
    tr.appendChild(el('td', r.outcome, BAD_OUTCOMES.includes(r.outcome) ? 'bad' : ''));
    tr.appendChild(el('td', fmt(r.latency_ms, 1), 'num'));
    tr.appendChild(el('td', r.grpc_status || '', r.grpc_status && r.grpc_status !== 'OK' ? 'bad' : ''));
    tr.appendChild(el('td', r.operation_id, 'mono'));
    tr.addEventListener('click', () => showDetail('Callback ' + r.seq + ' · ' + r.command, r));
    return tr;
  });
  $('recent').tBodies[0].replaceChildren(...rows);
}

async function refresh() {
  try {
    const [s, d, c] = await Promise.all([
      getJson('/admin/console/summary'),
      getJson('/admin/console/dead?limit=100'),
      getJson('/admin/callbacks?limit=30'),
    ]);
    summary = s;
    renderCommands(s.commands, s.window_s);
    renderUpstreams(s.upstreams);
    renderSpool(s.spool);
    renderDead(d);
    renderRecent(c.callbacks || []);
    $('reload').hidden = !s.reload;
    $('status').textContent = 'updated ' + new Date().toLocaleTimeString() + (s.redact ? ' · user content redacted (log.redact)' : '');
    $('status').className = 'muted';
  } catch (e) {
    if (e.message === 'unauthorized') { sessionStorage.removeItem(TOKEN_KEY); showLogin('The token was refused.'); return; }
    $('status').textContent = 'not updated: ' + e.message;
    $('status').className = 'bad';
  }
}

let pending = null;

function confirmAction(text, path) {
  pending = path;
  $('confirm-text').textContent = text;
  $('confirm').showModal();
}

async function runPending() {
  const path = pending;
  pending = null;
  $('confirm').close();
  if (!path) return;
  const notice = $('notice');
  try {
    const r = await fetch(path, {
      method: 'POST', credentials: 'same-origin',
      headers: headers({ 'X-Console-CSRF': csrf || '' }),
    });
    let message;
    try { message = (await r.json()).message; } catch (_) { message = 'HTTP ' + r.status; }
    notice.textContent = message || ('HTTP ' + r.status);
    notice.className = r.ok ? 'notice' : 'notice error';
  } catch (e) {
    notice.textContent = 'the action did not reach the gateway: ' + e.message;
    notice.className = 'notice error';
  }
  notice.hidden = false;
  refresh();
}

function localMs(id) {
  const v = $(id).value;
  return v ? new Date(v).getTime() : null;
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    start();
  });
  $('confirm-ok').addEventListener('click', runPending);
  $('confirm-cancel').addEventListener('click', () => { pending = null; $('confirm').close(); });
  $('show-unseen').addEventListener('change', () => summary && renderCommands(summary.commands, summary.window_s));
  $('reload').addEventListener('click', () => confirmAction(
    'Reload the configuration? The gateway reads its configuration file and environment again, as on SIGHUP. ' +
    'A configuration that does not load or changes start-up-only settings is refused, and the running one keeps serving.',
    '/admin/reload'));
  $('replay-all').addEventListener('click', () => confirmAction(
    'Replay all ' + (summary && summary.spool ? summary.spool.dead : '') + ' dead letters? They move back to pending with their attempts reset and are delivered again.',
    '/admin/console/replay?all=true'));
  $('replay-range').addEventListener('click', () => {
    const since = localMs('range-since');
    const until = localMs('range-until');
    if (since === null && until === null) { $('range-since').focus(); return; }
    const q = [];
    if (since !== null) q.push('since=' + since);
    if (until !== null) q.push('until=' + until);
    confirmAction('Replay the dead letters first stored ' +
      (since !== null ? 'from ' + new Date(since).toISOString() + ' ' : '') +
      (until !== null ? 'before ' + new Date(until).toISOString() : '') +
      '? They move back to pending with their attempts reset and are delivered again.',
      '/admin/console/replay?' + q.join('&'));
  });
  $('purge-dead').addEventListener('click', () => confirmAction(
    'Purge all ' + (summary && summary.spool ? summary.spool.dead : '') + ' dead letters? They are deleted for good and never delivered.',
    '/admin/console/purge'));
  $('drop-pending').addEventListener('click', () => {
    const c = $('drop-command').value.trim();
    if (!c) { $('drop-command').focus(); return; }
    confirmAction('Drop every pending event of ' + c + '? They are deleted for good and never delivered; events being delivered right now may still arrive once.',
      '/admin/console/drop?command=' + encodeURIComponent(c));
  });
  start();
});
