// sagad UI. Plain JavaScript, no dependencies: every call it makes is one
// of sagad's documented API calls (see /v1/openapi.json), with the bearer
// token kept in sessionStorage when the daemon asks for one.
'use strict';

const TOKEN = 'sagad.token';
const SVGNS = 'http://www.w3.org/2000/svg';
const STATUSES = ['failed', 'running', 'compensating', 'paused', 'completed', 'compensated', 'resolved'];
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/i;
const main = document.getElementById('main');
let timer = null;       // the current page's next refresh, if any
let gen = 0;            // bumped on every navigation: late answers of an old page are dropped
let pendingFocus = null; // what to focus once the page asked for is drawn

// later runs the current page's refresh in ms, unless the person has left
// the page meanwhile. There is only ever one pending.
function later(my, ms, fn) {
  clearTimeout(timer);
  timer = setTimeout(() => { timer = null; if (my === gen) fn(); }, ms);
}

// focusKey names the focused element so that it can be found again once the
// page is drawn anew (a live refresh, a filter that changed).
function focusKey(e) {
  if (!e || e === document.body || !main.contains(e) || e === main) return null;
  if (e.id) return '#' + CSS.escape(e.id);
  let sel = e.tagName.toLowerCase();
  for (const a of ['data-id', 'data-status', 'data-action', 'data-step', 'data-phase', 'data-attempt', 'href']) {
    if (e.hasAttribute(a)) sel += `[${a}="${CSS.escape(e.getAttribute(a))}"]`;
  }
  return sel;
}

function restoreFocus(key) {
  const e = key && main.querySelector(key);
  if (e) e.focus({preventScroll: true});
  return !!e;
}

// redraw draws the current page again (a live refresh): focus, scroll and
// what a text box holds are kept.
async function redraw(my, draw) {
  const key = focusKey(document.activeElement), scroll = window.scrollY;
  hideTip();
  await draw();
  if (my !== gen) return;
  restoreFocus(key);
  window.scrollTo(0, scroll);
}

// poll draws the current page again in ms, and so on while it is shown
// (each draw schedules the next): it waits while busy() says the person is
// using the page, and goes on after a refresh that failed.
function poll(my, ms, busy, draw) {
  const tick = () => {
    if (busy()) { later(my, ms, tick); return; }
    redraw(my, draw).catch((e) => { refreshFailed(my, e); later(my, ms, tick); });
  };
  later(my, ms, tick);
}

// focusIn reports whether the focus is inside an element that sel matches.
function focusIn(sel) {
  const a = document.activeElement;
  return !!(a && a.closest && a.closest(sel));
}

// refreshFailed says, on the page, that a live refresh failed; a refused
// token asks for it again.
function refreshFailed(my, e) {
  if (my !== gen) return;
  if (e instanceof APIError && e.status === 401) {
    loginPage(my, location.pathname + location.search, e.hadToken);
    return;
  }
  let note = document.getElementById('refresh-note');
  if (!note) {
    note = el('p', {id: 'refresh-note', class: 'msg error', role: 'status'});
    main.prepend(note);
  }
  note.textContent = 'Live refresh failed: ' + e.message;
}

// ---------------------------------------------------------------- DOM

// el builds an element: el('a', {href: '/x', class: 'y'}, 'text', child).
// Text is always text: nothing is parsed as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  append(e, children);
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVGNS, tag);
  setAttrs(e, attrs);
  append(e, children);
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(e, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function render(...nodes) {
  main.replaceChildren(...nodes.flat().filter(Boolean));
}

function message(kind, text) {
  return el('p', {class: 'msg ' + kind, role: kind === 'error' ? 'alert' : 'status'}, text);
}

function link(href, text) {
  return el('a', {href, 'data-link': true}, text);
}

function badge(status) {
  return el('span', {class: 'badge ' + status}, status);
}

function time(t) {
  if (!t) return '';
  const d = new Date(t);
  return el('time', {datetime: t, title: t}, d.toLocaleString());
}

function json(v) {
  return el('pre', {}, v === undefined || v === null ? 'null' : JSON.stringify(v, null, 2));
}

// ---------------------------------------------------------------- API

class APIError extends Error {
  constructor(status, problem) {
    super(problem && (problem.detail || problem.title) || ('HTTP ' + status));
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = {Accept: 'application/json'};
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch (e) { data = {title: text.slice(0, 200)}; }
  }
  if (!resp.ok) {
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN);
      const e = new APIError(401, data);
      e.hadToken = !!token;
      throw e;
    }
    throw new APIError(resp.status, data);
  }
  return data;
}

const get = (path) => api('GET', path);

// ---------------------------------------------------------------- routing

const routes = [
  [/^\/ui\/$/, listPage],
  [/^\/ui\/login$/, loginPage],
  [/^\/ui\/sagas\/([0-9A-Za-z]{26})$/, sagaPage],
  [/^\/ui\/definitions$/, definitionsPage],
  [/^\/ui\/definitions\/([A-Za-z0-9][A-Za-z0-9._-]{0,127})$/, definitionPage],
  [/^\/ui\/outbox$/, outboxPage],
];

// navigate shows another page; with keep, the element that has the focus
// keeps it (a filter changed), else the new page's content gets it.
function navigate(href, replace, keep) {
  pendingFocus = keep ? focusKey(document.activeElement) : null;
  if (replace) history.replaceState(null, '', href);
  else history.pushState(null, '', href);
  route();
}

async function route() {
  clearTimeout(timer);
  timer = null;
  hideTip();
  const my = ++gen;
  const path = location.pathname;
  for (const a of document.querySelectorAll('.top nav a')) {
    const here = a.getAttribute('href') === path || (path.startsWith('/ui/sagas/') && a.getAttribute('href') === '/ui/');
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.getElementById('logout').hidden = !sessionStorage.getItem(TOKEN);
  for (const [re, page] of routes) {
    const m = path.match(re);
    if (!m) continue;
    try {
      await page(my, ...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      if (my !== gen) return;
      if (e instanceof APIError && e.status === 401 && page !== loginPage) {
        loginPage(my, path + location.search, e.hadToken);
        return;
      }
      if (e instanceof APIError && e.status === 404) {
        notFound(path, e.message);
      } else {
        render(el('h1', {}, 'Something went wrong'), message('error', e.message));
      }
    }
    if (my === gen) {
      // The element that had the focus keeps it; else the page's content
      // gets it, unless the page gave it to something (a form's field).
      const key = pendingFocus;
      pendingFocus = null;
      if (!restoreFocus(key) && !main.contains(document.activeElement)) main.focus({preventScroll: true});
    }
    return;
  }
  notFound(path);
}

function notFound(path, why) {
  document.title = 'Not found · sagad';
  render(el('h1', {}, 'Not found'), why ? message('error', why) : null,
    el('p', {}, 'There is no page at ', el('code', {}, path), '. ', link('/ui/', 'See the sagas'), '.'));
}

document.addEventListener('click', (ev) => {
  const a = ev.target.closest && ev.target.closest('a[data-link]');
  if (!a || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  ev.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', route);
document.getElementById('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN);
  navigate('/ui/login');
});

// ---------------------------------------------------------------- login

// loginPage asks for the API's token. It is kept in sessionStorage: for this
// tab's session, never in a URL.
function loginPage(my, back, refused) {
  document.title = 'Sign in · sagad';
  const input = el('input', {type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true});
  const out = el('div', {'aria-live': 'polite'});
  if (refused) out.append(message('error', 'The token was refused. Enter it again.'));
  const form = el('form', {onsubmit: async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN, input.value.trim());
    try {
      await get('/v1/sagas/stats');
    } catch (e) {
      sessionStorage.removeItem(TOKEN);
      out.replaceChildren(message('error', e.status === 401 ? 'That token was refused.' : e.message));
      input.select();
      return;
    }
    const to = typeof back === 'string' && back.startsWith('/ui/') && !back.startsWith('/ui/login') ? back : '/ui/';
    navigate(to, true);
  }},
  el('label', {for: 'token'}, 'API token (sagad serve --token)'), input,
  el('button', {type: 'submit'}, 'Sign in'));
  render(el('section', {class: 'login'}, el('h1', {}, 'Sign in to sagad'),
    el('p', {class: 'muted'}, 'This daemon needs its API token. It is kept for this browser tab only.'), out, form));
  input.focus();
}

// ---------------------------------------------------------------- sagas

// stepAt names the step a saga is at, or stuck at.
function stepAt(s) {
  const steps = s.steps || [];
  const by = (f) => (steps.find(f) || {}).name || '';
  switch (s.status) {
    case 'failed':
      return by((st) => st.phase === 'compensation' && st.error) || by((st) => st.error);
    case 'completed':
      return '';
    case 'compensated':
    case 'resolved':
      return by((st) => st.status === 'failed') || by((st) => st.error);
    default:
      return by((st) => st.in_flight || st.waiting) ||
        by((st) => st.status === 'compensating') ||
        by((st) => st.status !== 'succeeded' && st.status !== 'skipped' && st.status !== 'compensated');
  }
}

async function listPage(my) {
  document.title = 'Sagas · sagad';
  const q = new URLSearchParams(location.search);
  const status = q.get('status') || '', definition = q.get('definition') || '', find = q.get('q') || '';
  const cursor = q.get('cursor') || '';
  const trail = (q.get('trail') || '').split(',').filter(Boolean); // cursors of the pages before

  const [stats, defs] = await Promise.all([get('/v1/sagas/stats'), get('/v1/definitions')]);
  let page;
  if (find && ULID.test(find)) {
    try {
      page = {sagas: [await get('/v1/sagas/' + encodeURIComponent(find))]};
    } catch (e) {
      if (e.status !== 404) throw e;
      // Not an id: an idempotency key that looks like one.
      page = await get('/v1/sagas?key=' + encodeURIComponent(find));
    }
  } else if (find) {
    page = await get('/v1/sagas?key=' + encodeURIComponent(find));
  } else {
    const p = new URLSearchParams({limit: q.get('limit') || '50'});
    if (status) p.set('status', status);
    if (definition) p.set('definition', definition);
    if (cursor) p.set('cursor', cursor);
    page = await get('/v1/sagas?' + p);
  }
  if (my !== gen) return;

  const go = (changes) => {
    const n = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(changes)) { if (v) n.set(k, v); else n.delete(k); }
    navigate('/ui/' + (n.toString() ? '?' + n : ''), false, true);
  };
  const filterChange = (k, v) => go({[k]: v, cursor: '', trail: ''});

  const counts = el('ul', {class: 'counts', 'aria-label': 'sagas by status'},
    STATUSES.map((st) => {
      const n = stats.counts[st] || 0;
      return el('li', {}, el('button', {type: 'button', class: (st === 'failed' && n > 0 ? 'failed' : '') + (n === 0 ? ' zero' : ''),
        'aria-pressed': status === st ? 'true' : 'false', 'data-status': st,
        onclick: () => filterChange('status', status === st ? '' : st)},
      el('span', {class: 'n'}, n), st));
    }));

  const statusSel = el('select', {id: 'f-status', onchange: (e) => filterChange('status', e.target.value)},
    el('option', {value: ''}, 'any'), STATUSES.map((st) => el('option', {value: st, selected: st === status}, st)));
  const names = (defs.definitions || []).map((d) => d.name);
  if (definition && !names.includes(definition)) names.push(definition);
  const defSel = el('select', {id: 'f-definition', onchange: (e) => filterChange('definition', e.target.value)},
    el('option', {value: ''}, 'any'), names.map((n) => el('option', {value: n, selected: n === definition}, n)));
  const findInput = el('input', {id: 'f-find', type: 'search', value: find, placeholder: 'saga id or idempotency key', size: 30});
  const filters = el('form', {class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); filterChange('q', findInput.value.trim()); }},
    el('label', {for: 'f-status'}, 'Status', statusSel),
    el('label', {for: 'f-definition'}, 'Definition', defSel),
    el('label', {for: 'f-find'}, 'Find', findInput),
    el('button', {type: 'submit'}, 'Find'),
    (status || definition || find) && el('button', {type: 'button', onclick: () => navigate('/ui/')}, 'Clear filters'));

  const live = el('input', {type: 'checkbox', id: 'live', checked: sessionStorage.getItem('sagad.live') !== 'off'});
  live.addEventListener('change', () => {
    sessionStorage.setItem('sagad.live', live.checked ? 'on' : 'off');
    setLive(live.checked);
  });

  const rows = page.sagas.map((s) => el('tr', {'data-id': s.id},
    el('td', {class: 'mono'}, link('/ui/sagas/' + s.id, s.id)),
    el('td', {}, link('/ui/definitions/' + encodeURIComponent(s.definition), s.definition), ' ', el('span', {class: 'muted mono'}, s.version)),
    el('td', {}, badge(s.status)),
    el('td', {}, stepAt(s)),
    el('td', {class: 'err'}, s.error || ''),
    el('td', {class: 'hide-narrow'}, time(s.created_at)),
    el('td', {class: 'hide-narrow'}, time(s.updated_at))));
  const table = el('div', {class: 'table-wrap'}, el('table', {id: 'sagas'},
    el('thead', {}, el('tr', {}, ['ID', 'Definition', 'Status', 'Step', 'Error'].map((h) => el('th', {scope: 'col'}, h)),
      el('th', {scope: 'col', class: 'hide-narrow'}, 'Started'), el('th', {scope: 'col', class: 'hide-narrow'}, 'Updated'))),
    el('tbody', {}, rows)));

  const pager = el('div', {class: 'pager'},
    el('button', {type: 'button', id: 'first', disabled: !cursor, onclick: () => go({cursor: '', trail: ''})}, 'First page'),
    el('button', {type: 'button', id: 'prev', disabled: !cursor, onclick: () => {
      const t = trail.slice(0, -1);
      go({cursor: trail[trail.length - 1] || '', trail: t.join(',')});
    }}, 'Previous page'),
    el('button', {type: 'button', id: 'next', disabled: !page.next_cursor, onclick: () => go({cursor: page.next_cursor, trail: [...trail, cursor].join(',')})}, 'Next page'),
    el('span', {class: 'muted'}, page.sagas.length + ' shown'));

  render(el('h1', {}, 'Sagas'), counts, filters,
    el('p', {}, el('label', {for: 'live'}, el('span', {}, live, ' Live refresh (every 3 s)'))),
    page.sagas.length ? table : el('p', {class: 'muted', id: 'empty'}, 'No saga matches.'), pager);

  // The live refresh fetches the same filters and page again; it keeps
  // where the focus is, and waits while the person types in Find.
  function setLive(on) {
    clearTimeout(timer);
    if (on) poll(my, 3000, () => document.activeElement === findInput || findInput.value.trim() !== find, () => listPage(my));
  }
  setLive(live.checked);
}

// ---------------------------------------------------------------- one saga

// attempts pairs each attempt's start in the log with how it ended: one bar
// per attempt_started entry.
function attempts(log, now) {
  const bars = [], open = new Map();
  const key = (e) => e.step + '\u0000' + e.phase + '\u0000' + e.attempt;
  const close = (e, outcome, b = open.get(key(e))) => {
    if (!b) return;
    open.delete(key(b));
    b.end = Date.parse(e.at);
    b.outcome = outcome;
    b.error = e.error || '';
    b.duration = e.duration || '';
    // The log's times are those of the engine's transitions; the attempt
    // itself ran for its duration, up to the transition that recorded it.
    const d = parseDuration(b.duration);
    if (d !== null && b.end - d > b.start) b.start = b.end - d;
    if (e.next) b.next = Date.parse(e.next);
  };
  for (const e of log) {
    switch (e.event) {
      case 'attempt_started': {
        // One still open under the same number never ran (a breaker
        // refused it; the number is used again).
        close(e, 'blocked');
        const b = {step: e.step, phase: e.phase, attempt: e.attempt, start: Date.parse(e.at), end: null, outcome: 'running', error: ''};
        bars.push(b);
        open.set(key(e), b);
        break;
      }
      case 'attempt_pending': {
        const b = open.get(key(e));
        if (b) b.outcome = 'waiting';
        break;
      }
      case 'attempt_succeeded':
        close(e, 'succeeded');
        break;
      case 'attempt_failed':
        close(e, e.outcome_unknown ? 'cut' : e.next ? 'retried' : 'failed');
        break;
      case 'breaker_open':
        // The call a start recorded was refused: nothing was attempted.
        for (const b of open.values()) {
          if (b.step === e.step && b.phase === e.phase) { close(e, 'blocked', b); break; }
        }
        break;
      case 'attempt_in_doubt':
        close(e, 'doubt');
        break;
    }
  }
  for (const b of bars) if (b.end === null) b.end = now;
  return bars;
}

const FINISHED = /^(completed|compensated|failed|resolved)$/;

// parseDuration reads a Go duration string ("1.5s", "290µs", "2m3s") as
// milliseconds; null if it is not one.
function parseDuration(text) {
  if (!text) return null;
  const units = {h: 3600e3, m: 60e3, s: 1e3, ms: 1, 'µs': 1e-3, 'us': 1e-3, ns: 1e-6};
  let ms = 0, rest = text;
  while (rest) {
    const m = rest.match(/^(\d+(?:\.\d+)?)(h|ms|m|s|µs|us|ns)/);
    if (!m) return null;
    ms += parseFloat(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return ms;
}

const OUTCOMES = {
  succeeded: 'succeeded', retried: 'failed, retried', failed: 'failed for good', cut: 'cut off (may have acted)',
  doubt: 'in doubt (in flight at a crash)', waiting: 'waiting for its answer', running: 'running',
  blocked: 'refused by the circuit breaker',
};

function fmtMs(ms) {
  if (ms < 1) return '<1ms';
  if (ms < 1000) return Math.round(ms) + 'ms';
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + 's';
  return Math.floor(ms / 60000) + 'm' + Math.round((ms % 60000) / 1000) + 's';
}

let tip = null;
function showTip(target, text) {
  if (!tip) { tip = el('div', {class: 'tip', role: 'tooltip', id: 'tip'}); document.body.append(tip); }
  tip.textContent = text;
  tip.hidden = false;
  const r = target.getBoundingClientRect();
  tip.style.left = Math.max(4, Math.min(r.left, window.innerWidth - 320)) + 'px';
  tip.style.top = (r.bottom + 6) + 'px';
}
function hideTip() { if (tip) tip.hidden = true; }

// timeline draws the attempts as an SVG: a row per step (its action and
// fallback) and a row per compensation, each attempt a bar from its start
// to its end, coloured by outcome, and the wait before a retry dashed.
function timeline(s, log) {
  // A finished saga's attempts have all ended by its last update.
  const now = FINISHED.test(s.status) ? Date.parse(s.updated_at) : Date.now();
  const bars = attempts(log, now);
  const rows = [];
  const rowOf = new Map();
  const row = (name, label) => {
    if (!rowOf.has(name)) { rowOf.set(name, rows.length); rows.push(label); }
    return rowOf.get(name);
  };
  for (const st of s.steps) row(st.name, st.name);
  for (const b of bars) {
    b.row = b.phase === 'compensation' ? row(b.step + '\u0000c', '↩ undo ' + b.step) : row(b.step, b.step);
  }
  let t0 = Date.parse(s.created_at), t1 = Date.parse(s.updated_at);
  for (const b of bars) { t0 = Math.min(t0, b.start); t1 = Math.max(t1, b.end, b.next || 0); }
  if (!(t1 > t0)) t1 = t0 + 1;
  const L = 170, W = Math.max(720, Math.min(1300, (main.clientWidth || 900) - 24)), R = 16, RH = 28, TOP = 24;
  const H = TOP + rows.length * RH + 10;
  const x = (t) => L + (t - t0) / (t1 - t0) * (W - L - R);
  const g = svg('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: 'timeline', role: 'group',
    'aria-label': `attempts of saga ${s.id}, ${bars.length} in all`});
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (t1 - t0) * i / 4, xx = x(t);
    g.append(svg('line', {class: 'axis', x1: xx, x2: xx, y1: TOP - 6, y2: H - 4}),
      svg('text', {x: xx, y: 14, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle', class: 'small'}, '+' + fmtMs(t - t0)));
  }
  rows.forEach((label, i) => g.append(svg('text', {class: 'row-label', x: 6, y: TOP + i * RH + 18}, label.length > 24 ? label.slice(0, 23) + '…' : label)));
  for (const b of bars) {
    const y = TOP + b.row * RH + 5, x1 = x(b.start), w = Math.max(4, x(b.end) - x1);
    if (b.next) {
      g.append(svg('line', {class: 'wait', x1: x1 + w, x2: Math.max(x1 + w, x(b.next)), y1: y + 9, y2: y + 9}));
    }
    const text = `${b.step} ${b.phase} attempt ${b.attempt}: ${OUTCOMES[b.outcome]}, ${b.duration || fmtMs(b.end - b.start)}` +
      (b.error ? '\n' + b.error : '');
    const r = svg('rect', {class: `attempt ${b.outcome}${b.phase === 'fallback' ? ' fallback' : ''}`, x: x1, y, width: w, height: 18, rx: 2,
      tabindex: 0, role: 'img', 'aria-label': text, 'data-step': b.step, 'data-phase': b.phase, 'data-attempt': b.attempt, 'data-outcome': b.outcome},
    svg('title', {}, text));
    r.addEventListener('mouseenter', () => showTip(r, text));
    r.addEventListener('focus', () => showTip(r, text));
    r.addEventListener('mouseleave', hideTip);
    r.addEventListener('blur', hideTip);
    g.append(r);
  }
  const legend = el('ul', {class: 'legend', 'aria-label': 'legend'},
    Object.entries(OUTCOMES).map(([k, v]) => el('li', {}, el('i', {class: k}), v)),
    el('li', {}, 'dashed line: the wait before a retry; dotted border: a fallback'));
  return [el('div', {class: 'timeline-wrap'}, g), legend];
}

// actionsFor returns the buttons for what the saga allows now.
function actionsFor(s, done) {
  const act = async (button, what, path, body) => {
    button.disabled = true;
    try {
      await api('POST', path, body);
      done(message('info', what + ': done.'));
    } catch (e) {
      done(message('error', what + ' failed: ' + e.message));
    }
  };
  const b = (label, cls, onclick) => {
    const btn = el('button', {type: 'button', class: cls, 'data-action': label.toLowerCase()}, label);
    btn.addEventListener('click', () => onclick(btn));
    return btn;
  };
  const id = encodeURIComponent(s.id);
  const out = [];
  const waiting = (s.status === 'running' || s.status === 'compensating') && s.wake_at && !s.steps.some((st) => st.in_flight || st.waiting);
  if (s.status === 'failed' || s.parked || waiting) {
    out.push(b('Retry', '', (btn) => act(btn, 'Retry', `/v1/sagas/${id}/retry`)));
  }
  if (s.status === 'running' || s.status === 'compensating') {
    out.push(b('Pause', '', (btn) => act(btn, 'Pause', `/v1/sagas/${id}/pause`)));
  }
  if (s.status === 'paused') {
    out.push(b('Resume', '', (btn) => act(btn, 'Resume', `/v1/sagas/${id}/resume`)));
  }
  if (s.status === 'running' || s.status === 'paused') {
    out.push(b('Abort', 'danger', (btn) => {
      if (confirm(`Abort saga ${s.id}? Its succeeded steps are compensated.`)) act(btn, 'Abort', `/v1/sagas/${id}/abort`);
    }));
  }
  if (s.status === 'failed' || s.status === 'compensating') {
    out.push(b('Resolve', '', (btn) => {
      const note = prompt('Resolve: what was done by hand? (kept in the saga\'s log)');
      if (note && note.trim()) act(btn, 'Resolve', `/v1/sagas/${id}/resolve`, {note: note.trim()});
    }));
  }
  return out;
}

async function sagaPage(my, id, flash) {
  const [s, log] = await Promise.all([get('/v1/sagas/' + id), get('/v1/sagas/' + id + '/log')]);
  if (my !== gen) return;
  document.title = `Saga ${s.id} · sagad`;
  const entries = log.entries || [];
  // After an action: the saga as it is now, and what the action did.
  const again = (msg) => { if (my === gen) redraw(my, () => sagaPage(my, id, msg)).catch((e) => refreshFailed(my, e)); };
  const actions = actionsFor(s, again);
  const facts = el('dl', {class: 'facts'},
    el('dt', {}, 'Status'), el('dd', {id: 'status'}, badge(s.status), s.paused_from ? ` (resumes ${s.paused_from})` : ''),
    el('dt', {}, 'Definition'), el('dd', {}, link('/ui/definitions/' + encodeURIComponent(s.definition), s.definition), ' version ', el('span', {class: 'mono'}, s.version)),
    s.idempotency_key && [el('dt', {}, 'Idempotency key'), el('dd', {class: 'mono'}, s.idempotency_key)],
    s.trace_id && [el('dt', {}, 'Trace'), el('dd', {class: 'mono', id: 'trace'}, s.trace_id)],
    el('dt', {}, 'Started'), el('dd', {}, time(s.created_at)),
    el('dt', {}, 'Updated'), el('dd', {}, time(s.updated_at)),
    s.deadline && [el('dt', {}, 'Deadline'), el('dd', {}, time(s.deadline))],
    s.wake_at && [el('dt', {}, 'Next attempt'), el('dd', {}, time(s.wake_at))],
    s.parked && [el('dt', {}, 'Parked'), el('dd', {}, s.parked)],
    s.error && [el('dt', {}, 'Error'), el('dd', {class: 'err', id: 'error'}, s.error)]);
  const steps = el('div', {class: 'table-wrap'}, el('table', {id: 'steps'},
    el('thead', {}, el('tr', {}, ['Step', 'Status', 'Phase', 'Attempts', 'Data', 'Error'].map((h) => el('th', {scope: 'col'}, h)))),
    el('tbody', {}, s.steps.map((st) => el('tr', {},
      el('td', {}, st.name),
      el('td', {}, badge(st.status), st.waiting ? ' waiting for its answer' : '', st.in_flight ? ' in flight' : ''),
      el('td', {}, st.phase || ''),
      el('td', {}, String(st.attempts) + (st.compensation_attempts ? ` + ${st.compensation_attempts} undo` : '')),
      el('td', {}, s.data && s.data[st.name] !== undefined ? json(s.data[st.name]) : ''),
      el('td', {class: 'err'}, st.error || ''))))));
  const logTable = el('div', {class: 'table-wrap'}, el('table', {id: 'log'},
    el('thead', {}, el('tr', {}, ['#', 'At', 'Event', 'Step', 'Phase', 'Attempt', 'Duration', 'Error or note'].map((h) => el('th', {scope: 'col'}, h)))),
    el('tbody', {}, entries.map((e) => el('tr', {},
      el('td', {}, e.seq), el('td', {}, time(e.at)), el('td', {}, e.event + (e.status ? ' → ' + e.status : '')),
      el('td', {}, e.step || ''), el('td', {}, e.phase || ''), el('td', {}, e.attempt || ''), el('td', {}, e.duration || ''),
      el('td', {class: e.error ? 'err' : ''}, e.error || e.note || ''))))));
  render(el('p', {}, link('/ui/', '← Sagas')),
    el('h1', {}, 'Saga ', el('span', {class: 'mono'}, s.id)),
    flash, facts,
    actions.length ? el('div', {class: 'actions', role: 'group', 'aria-label': 'actions'}, actions) : null,
    el('h2', {}, 'Timeline'), timeline(s, entries),
    el('h2', {}, 'Steps'), steps,
    el('h2', {}, 'Input'), json(s.input),
    el('h2', {}, 'Log'), logTable);
  if (!FINISHED.test(s.status)) {
    // Waits while the person reads a bar or is about to act.
    poll(my, 2000, () => !!main.querySelector('#timeline:hover') || focusIn('#timeline, .actions'), () => sagaPage(my, id, flash));
  }
}

// ---------------------------------------------------------------- definitions

async function definitionsPage(my) {
  const defs = await get('/v1/definitions');
  if (my !== gen) return;
  document.title = 'Definitions · sagad';
  const list = defs.definitions || [];
  render(el('h1', {}, 'Definitions'),
    list.length ? el('div', {class: 'table-wrap'}, el('table', {id: 'definitions'},
      el('thead', {}, el('tr', {}, ['Name', 'Latest version', 'Steps'].map((h) => el('th', {scope: 'col'}, h)))),
      el('tbody', {}, list.map((d) => el('tr', {},
        el('td', {}, link('/ui/definitions/' + encodeURIComponent(d.name), d.name)),
        el('td', {class: 'mono'}, d.version),
        el('td', {}, ((d.spec && d.spec.steps) || []).length))))))
      : el('p', {class: 'muted'}, 'No declarative definition is stored. PUT /v1/definitions/{name} or sagad definitions put stores one.'));
}

// callText says what a call reaches: its URL or its AMQP routing.
function callText(c) {
  if (!c) return '';
  if (c.amqp) return 'amqp ' + (c.amqp.exchange ? c.amqp.exchange + ' ' : '') + c.amqp.routing_key;
  try { const u = new URL(c.url); return (c.method || 'POST') + ' ' + u.host + u.pathname; } catch (e) { return c.url || ''; }
}

// diagram draws a definition's spec: steps as boxes in columns by how many
// steps come before them, arrows for the order they run in, a fallback
// above a step, its compensation below with a dashed arrow, and dashed
// arrows between compensations in the order they run (the reverse).
function diagram(spec) {
  const steps = spec.steps || [];
  const index = new Map(steps.map((st, i) => [st.name, i]));
  const deps = steps.map((st, i) => (st.after === undefined || st.after === null) ? (i > 0 ? [i - 1] : []) : st.after.map((n) => index.get(n)).filter((k) => k !== undefined));
  const level = [];
  const depth = (i, seen) => {
    if (level[i] !== undefined) return level[i];
    if (seen.has(i)) return 0;
    seen.add(i);
    level[i] = deps[i].length ? Math.max(...deps[i].map((k) => depth(k, seen) + 1)) : 0;
    return level[i];
  };
  steps.forEach((_, i) => depth(i, new Set()));
  const cols = [];
  steps.forEach((_, i) => { (cols[level[i]] = cols[level[i]] || []).push(i); });
  const BW = 170, BH = 52, GX = 70, CELL = 170, GY = 24, PAD = 16;
  const pos = [];
  cols.forEach((col, c) => col.forEach((i, r) => { pos[i] = {x: PAD + c * (BW + GX), y: PAD + r * (CELL + GY)}; }));
  const W = PAD * 2 + cols.length * (BW + GX) - GX;
  const H = PAD * 2 + Math.max(...cols.map((c) => c.length)) * (CELL + GY) - GY;
  const g = svg('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: 'diagram', role: 'img',
    'aria-label': `diagram of ${steps.length} steps`});
  g.append(svg('defs', {},
    svg('marker', {id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'},
      svg('path', {d: 'M0,0 L10,5 L0,10 z', fill: '#37474f'})),
    svg('marker', {id: 'arrow-c', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'},
      svg('path', {d: 'M0,0 L10,5 L0,10 z', fill: '#7b1fa2'}))));
  const stepY = 46, compY = 46 + BH + 26, fbY = 0, fbH = 30, cH = 30;
  const curve = (x1, y1, x2, y2) => `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
  // A compensation runs once those of the steps after it have ended,
  // passing through steps that have none.
  const undoneBefore = (i) => {
    const out = [], seen = new Set();
    const walk = (j) => {
      for (const k of deps[j]) {
        if (seen.has(k)) continue;
        seen.add(k);
        if (steps[k].compensation) out.push(k); else walk(k);
      }
    };
    walk(i);
    return out;
  };
  steps.forEach((st, i) => {
    const b = pos[i];
    for (const k of deps[i]) {
      const a = pos[k];
      g.append(svg('path', {class: 'edge', d: curve(a.x + BW, a.y + stepY + BH / 2, b.x - 2, b.y + stepY + BH / 2), 'marker-end': 'url(#arrow)'}));
    }
    if (!st.compensation) return;
    for (const k of undoneBefore(i)) {
      const a = pos[k];
      g.append(svg('path', {class: 'edge comp', d: curve(b.x, b.y + compY + cH / 2, a.x + BW + 2, a.y + compY + cH / 2), 'marker-end': 'url(#arrow-c)'}));
    }
  });
  steps.forEach((st, i) => {
    const {x, y} = pos[i];
    const box = svg('g', {class: 'step', 'data-step': st.name});
    box.append(svg('rect', {class: 'box' + (st.pivot ? ' pivot' : ''), x, y: y + stepY, width: BW, height: BH, rx: st.pivot ? 0 : 6}),
      svg('text', {x: x + 8, y: y + stepY + 17, class: 'row-label'}, st.name + (st.pivot ? '  ⚑ pivot' : '')),
      svg('text', {x: x + 8, y: y + stepY + 32, class: 'small'}, callText(st.action).slice(0, 30)),
      st.circuit_breaker && svg('text', {x: x + 8, y: y + stepY + 46, class: 'small'}, 'breaker ' + st.circuit_breaker.name));
    if (st.fallback) {
      box.append(svg('rect', {class: 'box fallback', x: x + 12, y: y + fbY, width: BW - 24, height: fbH, rx: 4}),
        svg('text', {x: x + 20, y: y + fbY + 19, class: 'small'}, 'fallback: ' + callText(st.fallback).slice(0, 22)),
        svg('path', {class: 'edge fallback', d: `M${x + BW / 2},${y + stepY} L${x + BW / 2},${y + fbY + fbH + 2}`, 'marker-end': 'url(#arrow)'}));
    }
    if (st.compensation) {
      box.append(svg('path', {class: 'edge comp', d: `M${x + BW / 2},${y + stepY + BH} L${x + BW / 2},${y + compY - 2}`, 'marker-end': 'url(#arrow-c)'}),
        svg('rect', {class: 'box comp', x: x + 12, y: y + compY, width: BW - 24, height: cH, rx: 12}),
        svg('text', {x: x + 20, y: y + compY + 19, class: 'small'}, 'undo: ' + callText(st.compensation).slice(0, 24)));
    }
    g.append(box);
  });
  return el('div', {class: 'diagram-wrap'}, g);
}

async function definitionPage(my, name) {
  const v = await get('/v1/definitions/' + encodeURIComponent(name) + '/versions');
  if (my !== gen) return;
  document.title = `${name} · sagad`;
  const versions = v.versions || [];
  const wanted = new URLSearchParams(location.search).get('version');
  const shown = versions.find((x) => x.version === wanted) || versions.find((x) => x.latest) || versions[versions.length - 1];
  render(el('p', {}, link('/ui/definitions', '← Definitions')),
    el('h1', {}, name),
    el('p', {}, 'Version ', el('span', {class: 'mono', id: 'version'}, shown.version), shown.latest ? ' (latest: new sagas start on it)' : ''),
    diagram(shown.spec),
    el('p', {class: 'muted'}, 'Solid arrows: the order steps run in. Dashed: a step\'s compensation, and the order compensations run in. Above a step: its fallback. ⚑: the pivot, the point of no return.'),
    el('h2', {}, 'Versions'),
    el('div', {class: 'table-wrap'}, el('table', {id: 'versions'},
      el('thead', {}, el('tr', {}, ['Version', '', 'Unfinished sagas'].map((h) => el('th', {scope: 'col'}, h)))),
      el('tbody', {}, versions.map((x) => el('tr', {},
        el('td', {class: 'mono'}, x === shown ? x.version : link(`/ui/definitions/${encodeURIComponent(name)}?version=${x.version}`, x.version)),
        el('td', {}, x.latest ? 'latest' : ''),
        el('td', {}, x.unfinished)))))),
    el('h2', {}, 'JSON'), json(shown.spec),
    el('p', {}, link('/ui/?definition=' + encodeURIComponent(name), 'Sagas of ' + name)));
}

// ---------------------------------------------------------------- outbox

function age(t) {
  return t ? fmtMs(Date.now() - Date.parse(t)) : '';
}

async function outboxPage(my, flash) {
  const [st, np] = await Promise.all([get('/v1/outbox/stats'), get('/v1/outbox?status=not_produced&limit=200')]);
  if (my !== gen) return;
  document.title = 'Outbox · sagad';
  const again = (msg) => { if (my === gen) redraw(my, () => outboxPage(my, msg)).catch((e) => refreshFailed(my, e)); };
  const requeue = async (btn, id) => {
    btn.disabled = true;
    try {
      await api('POST', '/v1/outbox/' + encodeURIComponent(id) + '/requeue');
      again(message('info', `Event ${id} re-queued: the relay publishes it again.`));
    } catch (e) {
      again(message('error', 'Requeue failed: ' + e.message));
    }
  };
  const events = np.events || [];
  render(el('h1', {}, 'Outbox'), flash,
    el('div', {class: 'table-wrap'}, el('table', {id: 'outbox-stats'},
      el('thead', {}, el('tr', {}, ['Status', 'Events', 'Oldest'].map((h) => el('th', {scope: 'col'}, h)))),
      el('tbody', {},
        el('tr', {}, el('td', {}, 'new (waiting to be published)'), el('td', {}, st.counts.new), el('td', {}, age(st.oldest_new))),
        el('tr', {}, el('td', {}, 'not_produced (gave up: needs a person)'), el('td', {class: st.counts.not_produced ? 'err' : ''}, st.counts.not_produced), el('td', {}, age(st.oldest_not_produced))),
        el('tr', {}, el('td', {}, 'produced (kept a while)'), el('td', {}, st.counts.produced), el('td', {}, ''))))),
    el('h2', {}, 'Not produced'),
    events.length ? el('div', {class: 'table-wrap'}, el('table', {id: 'not-produced'},
      el('thead', {}, el('tr', {}, ['Event', 'Saga', 'Name', 'Route', 'Attempts', 'Last error', ''].map((h) => el('th', {scope: 'col'}, h)))),
      el('tbody', {}, events.map((e) => el('tr', {},
        el('td', {class: 'mono'}, e.id),
        el('td', {class: 'mono'}, link('/ui/sagas/' + e.saga_id, e.saga_id)),
        el('td', {}, e.name),
        el('td', {}, (e.exchange || '(default)') + ' ' + e.routing_key),
        el('td', {}, e.attempts),
        el('td', {class: 'err'}, e.last_error || ''),
        el('td', {}, (() => { const b = el('button', {type: 'button', 'data-action': 'requeue'}, 'Requeue'); b.addEventListener('click', () => requeue(b, e.id)); return b; })()))))))
      : el('p', {class: 'muted'}, 'None: every event was published or waits its turn.'));
  poll(my, 5000, () => focusIn('table'), () => outboxPage(my, flash));
}

route();
