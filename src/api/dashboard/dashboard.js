// The herd dashboard: polls /api/state once a second and draws it. No build step, no library.
//
// A server with an API key answers /api/state only with it: the page takes it from its URL
// fragment (http://host:8080/#key=KEY, which the browser never sends to the server, so no log
// or proxy sees it) or asks for it, keeps it in this tab's sessionStorage and sends it as a
// bearer header.

const COLORS = ['#7cc4a4', '#7aa8e0', '#e0b060', '#d890c8', '#a0d070', '#e08870', '#70d0d0', '#c0a0f0'];
const history = [];
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'style') Object.assign(e.style, v);
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function bytes(n) {
  if (n === undefined || n === null) return '?';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

/** A tensor-parallel stage's members with their shares, or undefined for a stage on one node. */
function groupOf(stage) {
  return stage.nodes?.some((m) => m.share) ? stage.nodes : undefined;
}

/** Runs [a, b) of KV heads, FFN rows or head rows as a first–last range. */
const span = ([a, b]) => `${a}–${b - 1}`;

function drawLayers(state) {
  const total = state.model.layers;
  $('layer-count').textContent = `${total} in ${state.model.id}`;
  const reason = $('plan-reason');
  reason.hidden = !state.plan_reason;
  reason.textContent = state.plan_reason ? `plan: ${state.plan_reason}` : '';
  const bar = $('layers');
  bar.replaceChildren();
  state.nodes.forEach((n, i) => {
    const [a, b] = n.layers;
    const who =
      groupOf(n)
        ?.map((m) => m.name)
        .join(' + ') ?? n.node;
    bar.append(
      el(
        'div',
        {
          className: 'range',
          title: `${who}: layers ${a}–${b - 1}`,
          'data-node': n.node,
          style: {
            left: `${(100 * a) / total}%`,
            width: `${(100 * (b - a)) / total}%`,
            background: COLORS[i % COLORS.length],
          },
        },
        `${who} [${a}, ${b})`,
      ),
    );
  });
}

/** A group stage's members, each with its address and share of every layer. */
function drawMembers(members) {
  return el(
    'ul',
    { className: 'members' },
    ...members.map((m) =>
      el(
        'li',
        { className: 'member', 'data-node': m.name },
        `${m.name} · ${m.address} · KV heads ${span(m.share.kv_heads)} · FFN rows ${span(m.share.ffn_rows)}` +
          (m.share.vocab_rows ? ` · head rows ${span(m.share.vocab_rows)}` : ''),
      ),
    ),
  );
}

/** The node's own recent compute per token (its share of each step), as /api/state gives it. */
function stageTime(ms) {
  const parts = [
    ['decode', ms?.decode],
    ['prefill', ms?.prefill],
  ]
    .filter(([, v]) => v !== undefined)
    .map(([p, v]) => `${p} ${v.toFixed(v < 10 ? 2 : 1)}`);
  return parts.length > 0 ? `${parts.join(' · ')} ms/token` : 'no steps yet';
}

function drawNodes(state) {
  const list = $('nodes');
  list.replaceChildren();
  state.nodes.forEach((n, i) => {
    const used = n.memTotal && n.memAvailable !== undefined ? n.memTotal - n.memAvailable : undefined;
    const pct = used !== undefined ? Math.round((100 * used) / n.memTotal) : 0;
    const group = groupOf(n);
    list.append(
      el(
        'li',
        { className: 'node', 'data-node': n.node, style: { borderLeftColor: COLORS[i % COLORS.length] } },
        el('div', { className: 'name' }, group ? `group of ${group.length}, led by ${n.node}` : n.node),
        el('div', { className: 'meta' }, `${n.address} · layers ${n.layers[0]}–${n.layers[1] - 1}`),
        ...(group ? [drawMembers(group)] : []),
        el('div', { className: 'meta' }, [n.arch, n.backend && `${n.backend} kernels`].filter(Boolean).join(' · ')),
        el(
          'div',
          { className: 'meta mem-text' },
          `${group ? "leader's memory" : 'memory'} ${bytes(used)} / ${bytes(n.memTotal)}${n.rss ? ` · herd ${bytes(n.rss)}` : ''}`,
        ),
        el(
          'div',
          { className: 'meta stage-time', title: "this node's own compute per token, recent average" },
          stageTime(n.stageMs),
        ),
        el('div', { className: 'mem' }, el('div', { style: { width: `${pct}%` } })),
      ),
    );
  });
}

function drawSpark() {
  const c = $('spark');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(1, ...history);
  g.strokeStyle = '#7cc4a4';
  g.lineWidth = 2;
  g.beginPath();
  history.forEach((v, i) => {
    const x = (i / 119) * c.width;
    const y = c.height - 4 - (v / max) * (c.height - 8);
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.stroke();
}

const KEY_ITEM = 'herd-api-key';

/** A key in the fragment moves to sessionStorage, and out of the address bar and history. */
function keyFromFragment() {
  const m = /^#key=(.+)$/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(KEY_ITEM, decodeURIComponent(m[1]));
  window.history.replaceState(null, '', location.pathname + location.search);
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** The server refused the key (or got none): ask for it. */
function askForKey() {
  const status = $('status');
  status.textContent = 'API key needed';
  status.className = 'status locked';
  $('auth').hidden = false;
}

$('auth').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $('auth-key').value.trim());
  $('auth-key').value = '';
  $('auth').hidden = true;
  poll();
});

async function poll() {
  try {
    const r = await fetch('/api/state', { cache: 'no-store', headers: authHeaders() });
    if (r.status === 401) {
      askForKey();
      return;
    }
    const s = await r.json();
    $('model').textContent =
      `${s.model.id} · ${s.model.architecture} · ${bytes(s.model.bytes)} · ctx ${s.model.context}`;
    const status = $('status');
    status.textContent = s.mode ? `${s.status} (${s.mode})` : s.status;
    status.className = `status ${s.status}`;
    $('tps').textContent = s.tokens_per_second.toFixed(1);
    $('sessions').textContent = `${s.sessions.active} / ${s.sessions.slots}`;
    $('queued').textContent = String(s.sessions.queued);
    $('generated').textContent = String(s.tokens_generated);
    $('version').textContent = `herd ${s.version}`;
    const err = $('error');
    err.hidden = !s.error;
    err.textContent = s.error ?? '';
    history.push(s.tokens_per_second);
    if (history.length > 120) history.shift();
    drawLayers(s);
    drawNodes(s);
    drawSpark();
    document.body.dataset.loaded = 'true';
  } catch {
    const status = $('status');
    status.textContent = 'offline';
    status.className = 'status offline';
  }
}

keyFromFragment();
poll();
setInterval(() => {
  if ($('auth').hidden) poll();
}, 1000);
