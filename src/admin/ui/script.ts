// Browser code of the live view (plain ES2020, no framework, no external assets). It polls /identities
// every 2 s, follows /events over SSE and fetches /audit when an event is clicked.
export const UI_SCRIPT = `
'use strict';
(function () {
  var KINDS = ['human', 'service', 'job', 'bot', 'agent', 'unknown'];
  var MACHINE = { service: true, job: true, bot: true, agent: true };
  var HISTORY = 150; // 5 minutes at one sample every 2 s
  var MAX_EVENTS = 200;
  var state = { rows: [], edges: [], currency: 'USD', sortKey: 'rps', sortDir: -1, search: '', history: [], selected: null };
  var $ = function (id) { return document.getElementById(id); };

  function esc(v) {
    return String(v == null ? '' : v).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function fmtNum(n, d) { return n == null ? '' : Number(n).toFixed(d == null ? 1 : d); }
  function fmtBytes(n) {
    if (!n) return '0 B';
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + u[i];
  }
  function fmtCost(n) {
    if (!n) return '';
    // compact: the currency sits in the column header, tiny per-identity costs in exponent form
    return n >= 1 ? n.toFixed(2) : n >= 0.01 ? n.toFixed(3) : n.toExponential(1);
  }
  function fmtRel(iso) {
    if (!iso) return '';
    var s = (Date.parse(iso) - Date.now()) / 1000, a = Math.abs(s), t;
    if (a < 60) t = Math.round(a) + 's';
    else if (a < 3600) t = Math.round(a / 60) + 'm';
    else if (a < 172800) t = Math.round(a / 3600) + 'h';
    else t = Math.round(a / 86400) + 'd';
    return s < 0 ? t + ' ago' : 'in ' + t;
  }
  function kindBadge(k) { return '<span class="badge kind-' + esc(k) + '">' + esc(k) + '</span>'; }

  // ---- header stats
  function renderStats(view) {
    var human = 0, machine = 0, total = view.totals.rps || 0, errors = 0, requests = 0;
    view.identities.forEach(function (r) {
      if (r.kind === 'human') human += r.rps; else if (MACHINE[r.kind]) machine += r.rps;
      errors += r.errors; requests += r.requests;
    });
    $('stat-identities').textContent = view.tracked + ' / ' + view.maxIdentities;
    $('stat-rps').textContent = fmtNum(total, 1);
    $('stat-human').textContent = total ? Math.round((human / total) * 100) + '%' : '–';
    $('stat-machine').textContent = total ? Math.round((machine / total) * 100) + '%' : '–';
    $('stat-errors').textContent = requests ? fmtNum((errors / requests) * 100, 1) + '%' : '–';
  }

  // ---- human vs machine split (stacked area of req/s by kind)
  function pushHistory(view) {
    var sample = { t: Date.now() };
    KINDS.forEach(function (k) { sample[k] = (view.totals.byKind[k] && view.totals.byKind[k].rps) || 0; });
    state.history.push(sample);
    if (state.history.length > HISTORY) state.history.shift();
    // how many samples the chart holds, for whoever waits for it to have drawn a trend (the browser tests)
    $('split-chart').dataset.samples = String(state.history.length);
  }
  function renderLegend() {
    var last = state.history[state.history.length - 1] || {};
    var html = KINDS.map(function (k) {
      return '<span><i class="swatch" style="background:var(--' + k + ')"></i>' + k + ' <b>' + fmtNum(last[k] || 0, 1) + '</b></span>';
    }).join('');
    $('split-legend').innerHTML = html + '<span class="muted">req/s, last 5 min</span>';
  }
  function renderChart() {
    var canvas = $('split-canvas');
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var pad = { l: 34, r: 6, t: 6, b: 16 };
    var data = state.history, max = 0;
    data.forEach(function (s) { var sum = 0; KINDS.forEach(function (k) { sum += s[k]; }); if (sum > max) max = sum; });
    max = max > 0 ? niceCeil(max) : 1;
    var x = function (i) { return pad.l + ((w - pad.l - pad.r) * (i + HISTORY - data.length)) / (HISTORY - 1); };
    var y = function (v) { return h - pad.b - ((h - pad.t - pad.b) * v) / max; };
    ctx.strokeStyle = cssVar('--border'); ctx.fillStyle = cssVar('--muted'); ctx.lineWidth = 1;
    ctx.font = '10px system-ui, sans-serif'; ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    for (var g = 0; g <= 4; g++) {
      var gv = (max * g) / 4, gy = Math.round(y(gv)) + 0.5;
      ctx.beginPath(); ctx.moveTo(pad.l, gy); ctx.lineTo(w - pad.r, gy); ctx.stroke();
      ctx.fillText(gv >= 10 ? Math.round(gv) : gv.toFixed(1), pad.l - 4, gy);
    }
    ctx.textAlign = 'left'; ctx.textBaseline = 'alphabetic';
    ctx.fillText('-5m', pad.l, h - 3); ctx.textAlign = 'right'; ctx.fillText('now', w - pad.r, h - 3);
    if (data.length < 2) return;
    var base = data.map(function () { return 0; });
    KINDS.forEach(function (k) {
      var top = data.map(function (s, i) { return base[i] + s[k]; });
      ctx.beginPath();
      top.forEach(function (v, i) { if (i) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v)); });
      for (var i = data.length - 1; i >= 0; i--) ctx.lineTo(x(i), y(base[i]));
      ctx.closePath();
      ctx.globalAlpha = 0.75; ctx.fillStyle = cssVar('--' + k); ctx.fill(); ctx.globalAlpha = 1;
      base = top;
    });
  }
  function niceCeil(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v))), n = v / p;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * p;
  }

  // ---- dependency and trust-boundary graph: caller groups (one per trust boundary) → the fronted service
  var GROUPS = [
    { id: 'internal-verified', label: 'Internal · verified' },
    { id: 'unverified', label: 'Unverified' },
    { id: 'external', label: 'External' },
  ];
  var PER_GROUP = 4;
  function trunc(s, n) { return s.length > n ? s.slice(0, n - 1) + '…' : s; }
  function renderGraph() {
    var byGroup = {}, callees = [], W = 540, H = 200, colW = 170, gapX = 15, nodeH = 19;
    GROUPS.forEach(function (g) { byGroup[g.id] = { list: [], requests: 0 }; });
    state.edges.forEach(function (e) {
      var g = byGroup[e.boundary] || byGroup.unverified;
      g.list.push(e); g.requests += e.requests;
      if (callees.indexOf(e.callee) < 0) callees.push(e.callee);
    });
    if (!callees.length) { $('graph').innerHTML = '<div class="empty">No traffic yet</div>'; return; }
    var maxReq = 1, boxes = '', edges = '', services = '';
    GROUPS.forEach(function (g) { if (byGroup[g.id].requests > maxReq) maxReq = byGroup[g.id].requests; });
    var serviceY = H - 34, boxH = 24 + (PER_GROUP + 1) * (nodeH + 3);
    callees.forEach(function (c, i) {
      var cw = 150, cx = (W * (i + 1)) / (callees.length + 1) - cw / 2;
      services += '<g class="node callee" data-service="' + esc(c) + '"><rect x="' + cx + '" y="' + serviceY + '" width="' + cw + '" height="30" rx="8"></rect>' +
        '<text x="' + (cx + cw / 2) + '" y="' + (serviceY + 19) + '" text-anchor="middle" font-weight="600">' + esc(trunc(c, 20)) + '</text></g>';
    });
    GROUPS.forEach(function (g, gi) {
      var grp = byGroup[g.id], x = gi * (colW + gapX) + 2, y = 2;
      var shown = grp.list.slice(0, PER_GROUP), more = grp.list.length - shown.length;
      boxes += '<g class="group ' + g.id + '" data-boundary="' + g.id + '"><rect x="' + x + '" y="' + y + '" width="' + colW + '" height="' + boxH + '"></rect>' +
        '<text class="group-label" x="' + (x + 8) + '" y="' + (y + 15) + '">' + esc(g.label) + ' · ' + grp.list.length + '</text></g>';
      var ny = y + 22;
      if (!grp.list.length) boxes += '<text x="' + (x + 10) + '" y="' + (ny + 13) + '" class="muted-label">no callers</text>';
      shown.forEach(function (e) {
        boxes += '<g class="node caller" data-identity="' + esc(e.caller) + '" data-source="' + esc(e.callerSource) + '"><rect x="' + (x + 6) + '" y="' + ny + '" width="' + (colW - 12) + '" height="' + nodeH + '" rx="5"></rect>' +
          '<circle cx="' + (x + 15) + '" cy="' + (ny + nodeH / 2) + '" r="3.5" fill="var(--' + esc(e.kind) + ')"></circle>' +
          '<text x="' + (x + 23) + '" y="' + (ny + 13) + '">' + esc(trunc(e.caller, 22)) + '<title>' + esc(e.caller + ' (' + e.callerSource + ') → ' + e.callee + ': ' + e.requests + ' requests') + '</title></text></g>';
        ny += nodeH + 3;
      });
      if (more > 0) boxes += '<text x="' + (x + 10) + '" y="' + (ny + 13) + '" class="muted-label">+' + more + ' more</text>';
      if (!grp.requests) return;
      var sx = x + colW / 2, sy = y + boxH, sw = 1.5 + (4 * Math.log(1 + grp.requests)) / Math.log(1 + maxReq);
      var targets = {};
      grp.list.forEach(function (e) { targets[e.callee] = (targets[e.callee] || 0) + e.requests; });
      Object.keys(targets).forEach(function (c) {
        var tx = (W * (callees.indexOf(c) + 1)) / (callees.length + 1), ty = serviceY, my = (sy + ty) / 2;
        edges += '<path class="edge ' + g.id + '" stroke-width="' + sw.toFixed(1) + '" d="M' + sx + ' ' + sy + ' C' + sx + ' ' + my + ' ' + tx + ' ' + my + ' ' + tx + ' ' + ty + '">' +
          '<title>' + esc(g.label + ' → ' + c + ': ' + targets[c] + ' requests') + '</title></path>';
      });
    });
    $('graph').innerHTML = '<svg viewBox="-2 -2 ' + (W + 4) + ' ' + (H + 4) + '" preserveAspectRatio="xMidYMid meet" role="img" aria-label="Callers grouped by trust boundary and the services they call">' +
      edges + boxes + services + '</svg>';
  }

  // ---- identity table
  var COLUMNS = {
    name: function (r) { return r.name; }, kind: function (r) { return r.kind; }, source: function (r) { return r.source; },
    verified: function (r) { return r.verified ? 1 : 0; }, rps: function (r) { return r.rps; },
    errors: function (r) { return r.errorRatio; }, p95: function (r) { return r.p95Ms || 0; },
    bytes: function (r) { return r.bytesIn + r.bytesOut; }, cost: function (r) { return r.cost; },
    lastSeen: function (r) { return r.lastSeen; }, expiry: function (r) { return r.credentialExpiry || '~'; },
  };
  function renderTable() {
    var q = state.search.toLowerCase(), key = COLUMNS[state.sortKey], dir = state.sortDir;
    var rows = q ? state.rows.filter(function (r) {
      return (r.name + ' ' + r.kind + ' ' + r.source + ' ' + (r.team || '') + ' ' + (r.rule || '')).toLowerCase().indexOf(q) >= 0;
    }) : state.rows.slice();
    rows.sort(function (a, b) { var x = key(a), y = key(b); return x < y ? -dir : x > y ? dir : 0; });
    var now = Date.now(), html = new Array(rows.length);
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i], exp = r.credentialExpiry ? Date.parse(r.credentialExpiry) : 0;
      var expClass = !exp ? '' : exp < now ? 'bad' : exp - now < 3600e3 ? 'warn' : '';
      var job = r.job ? (r.job.overdue ? ' <span class="badge bad" title="no success within expectEvery">overdue</span>'
        : r.job.consecutiveFailures ? ' <span class="badge warn">' + r.job.consecutiveFailures + ' failing</span>' : '') : '';
      html[i] = '<tr data-identity="' + esc(r.name) + '" data-source="' + esc(r.source) + '" data-kind="' + esc(r.kind) + '">' +
        '<td class="name" title="' + esc(r.name + (r.rule ? ' (rule ' + r.rule + ')' : '')) + '">' + esc(r.name) + job +
        (r.actor ? ' <span class="badge actor" title="' + esc(r.actor + ' on behalf of ' + r.name) + '">via ' + esc(r.actor) + '</span>' : '') + '</td>' +
        '<td>' + kindBadge(r.kind) + '</td><td>' + esc(r.source) + '</td>' +
        '<td>' + (r.verified ? '<span class="ok" title="verified">✓ yes</span>' : '<span class="muted">no</span>') + '</td>' +
        '<td class="num">' + fmtNum(r.rps, 2) + '</td>' +
        '<td class="num ' + (r.errorRatio > 0.05 ? 'bad' : '') + '">' + fmtNum(r.errorRatio * 100, 1) + '%</td>' +
        '<td class="num">' + (r.p95Ms == null ? '' : fmtNum(r.p95Ms, 1) + ' ms') + '</td>' +
        '<td class="num">' + fmtBytes(r.bytesIn) + ' / ' + fmtBytes(r.bytesOut) + '</td>' +
        '<td class="num">' + fmtCost(r.cost) + '</td>' +
        '<td>' + fmtRel(r.lastSeen) + '</td>' +
        '<td class="' + expClass + '">' + fmtRel(r.credentialExpiry) + '</td></tr>';
    }
    $('identity-rows').innerHTML = html.join('') || '<tr><td colspan="11" class="empty">No identities</td></tr>';
    $('table-count').textContent = rows.length + ' of ' + state.rows.length + ' identities';
    Array.prototype.forEach.call(document.querySelectorAll('#identity-table th'), function (th) {
      th.setAttribute('aria-sort', th.dataset.sort === state.sortKey ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    });
  }

  // ---- polling
  function refresh() {
    if (document.hidden) return;
    fetch('/identities?sort=requests').then(function (r) { return r.json(); }).then(function (view) {
      state.rows = view.identities; state.edges = view.edges; state.currency = view.currency || 'USD';
      var costHead = document.querySelector('#identity-table th[data-sort="cost"]');
      if (costHead) costHead.textContent = 'Cost ' + state.currency;
      pushHistory(view); renderStats(view); renderLegend(); renderChart(); renderGraph(); renderTable();
      document.body.dataset.loaded = 'true';
    }).catch(function () { setStatus('down', 'admin unreachable'); });
  }

  // ---- live events
  var source = null, pending = [], flushScheduled = false, retryTimer = 0;
  function setStatus(cls, text) { var s = $('live-status'); s.className = 'status ' + cls; $('live-text').textContent = text; }
  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    var who = $('event-filter').value.trim();
    source = new EventSource('/events' + (who ? '?identity=' + encodeURIComponent(who) : ''));
    source.onopen = function () { setStatus('live', 'live'); };
    // A stream that ended is reopened by the browser itself; one the server refused (503 at
    // adminAccess.liveClients, 401, 403) is given up for good (readyState CLOSED): ask again in a while
    source.onerror = function () {
      if (source.readyState !== 2) { setStatus('down', 'reconnecting…'); return; }
      setStatus('down', 'refused: trying again in 5 s');
      retryTimer = setTimeout(connect, 5000);
    };
    source.onmessage = function (m) {
      try { pending.push(JSON.parse(m.data)); } catch (e) { return; }
      if (pending.length > MAX_EVENTS) pending.splice(0, pending.length - MAX_EVENTS);
      if (!flushScheduled) { flushScheduled = true; requestAnimationFrame(flushEvents); }
    };
  }
  // While the pointer is over the feed, or the keyboard focus is in it, it holds still (new events wait,
  // bounded), so a row can be clicked or read and opened with Enter.
  var feedHeld = false;
  function flushEvents() {
    flushScheduled = false;
    if (feedHeld) return;
    var list = $('events'), frag = document.createDocumentFragment();
    for (var i = 0; i < pending.length; i++) frag.insertBefore(eventItem(pending[i]), frag.firstChild);
    pending = [];
    list.insertBefore(frag, list.firstChild);
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
  }
  function eventItem(e) {
    var li = document.createElement('li');
    li.tabIndex = 0;
    li.dataset.requestId = e.id; li.dataset.traceId = e.trace; li.dataset.spanId = e.span; li.dataset.identity = e.identity; li.dataset.source = e.source;
    var d = new Date(e.t), hh = String(d.getHours()).padStart(2, '0'), mm = String(d.getMinutes()).padStart(2, '0'), ss = String(d.getSeconds()).padStart(2, '0');
    var flags = (e.decision ? ' · ' + e.decision : '') + (e.error ? ' · upstream ' + e.error : '') + (e.failures ? ' · ' + e.failures.join(', ') : '') + (e.anomalies ? ' · ' + e.anomalies.join(', ') : '');
    li.innerHTML = '<span class="time">' + hh + ':' + mm + ':' + ss + '</span>' +
      '<span class="code s' + String(e.status).charAt(0) + '">' + esc(e.status) + '</span>' +
      '<span class="what">' + esc(e.method + ' ' + e.path) + '<span class="who"><i class="dot" style="background:var(--' + esc(e.kind) + ')"></i> ' + (e.actor ? esc(e.actor) + ' on behalf of ' : '') + esc(e.identity) + ' · ' + esc(e.source) + ' · ' + esc(e.kind) + esc(flags) + '</span></span>' +
      '<span class="ms">' + fmtNum(e.ms, 1) + ' ms</span>';
    return li;
  }
  function showAudit(li) {
    if (state.selected) state.selected.classList.remove('selected');
    state.selected = li; li.classList.add('selected');
    var detail = $('audit-detail');
    detail.innerHTML = '<div class="empty">Loading…</div>';
    // the span id is the proxy's own: a client may reuse a request id (a retry does) or a whole traceparent
    var q = li.dataset.spanId ? 'span_id=' + encodeURIComponent(li.dataset.spanId)
      : li.dataset.requestId ? 'request_id=' + encodeURIComponent(li.dataset.requestId) : 'trace_id=' + encodeURIComponent(li.dataset.traceId);
    fetch('/audit?limit=1&' + q).then(function (r) { return r.json(); }).then(function (body) {
      var rec = body.events && body.events[0];
      if (!rec) { detail.innerHTML = '<div class="empty">This request is no longer in the audit ring</div>'; return; }
      var html = '<dl data-request-id="' + esc(rec.request_id) + '">';
      Object.keys(rec).forEach(function (k) {
        var v = rec[k];
        if (v == null || (Array.isArray(v) && !v.length)) return;
        if (typeof v === 'object') v = Array.isArray(v) ? v.map(function (x) { return typeof x === 'object' ? x.source + ':' + x.reason : x; }).join(', ')
          : Object.keys(v).map(function (f) { return f + '=' + v[f]; }).join(', ');
        if (v === '') return;
        html += '<dt>' + esc(k) + '</dt><dd data-field="' + esc(k) + '">' + esc(v) + '</dd>';
      });
      detail.innerHTML = html + '</dl>';
    }).catch(function () { detail.innerHTML = '<div class="empty">Could not load the audit record</div>'; });
  }

  // ---- wiring
  $('events').addEventListener('click', function (ev) { var li = ev.target.closest('li'); if (li) showAudit(li); });
  var pointerIn = false, focusIn = false;
  function holdFeed() {
    feedHeld = pointerIn || focusIn;
    $('events').classList.toggle('held', feedHeld);
    if (!feedHeld && pending.length && !flushScheduled) { flushScheduled = true; requestAnimationFrame(flushEvents); }
  }
  $('events').addEventListener('mouseenter', function () { pointerIn = true; holdFeed(); });
  $('events').addEventListener('mouseleave', function () { pointerIn = false; holdFeed(); });
  $('events').addEventListener('focusin', function () { focusIn = true; holdFeed(); });
  $('events').addEventListener('focusout', function (ev) {
    focusIn = $('events').contains(ev.relatedTarget); holdFeed();
  });
  $('events').addEventListener('keydown', function (ev) {
    if (ev.key === 'Enter' && ev.target.tagName === 'LI') showAudit(ev.target);
  });
  function sortBy(th) {
    if (state.sortKey === th.dataset.sort) state.sortDir = -state.sortDir;
    else { state.sortKey = th.dataset.sort; state.sortDir = th.dataset.sort === 'name' || th.dataset.sort === 'kind' || th.dataset.sort === 'source' ? 1 : -1; }
    renderTable();
  }
  document.querySelector('#identity-table thead').addEventListener('click', function (ev) {
    var th = ev.target.closest('th'); if (th) sortBy(th);
  });
  // the column headers are sort buttons for the keyboard too
  document.querySelector('#identity-table thead').addEventListener('keydown', function (ev) {
    var th = ev.target.closest('th');
    if (th && (ev.key === 'Enter' || ev.key === ' ')) { ev.preventDefault(); sortBy(th); }
  });
  Array.prototype.forEach.call(document.querySelectorAll('#identity-table th[data-sort]'), function (th) { th.tabIndex = 0; });
  var searchTimer = 0;
  $('identity-search').addEventListener('input', function (ev) {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () { state.search = ev.target.value.trim(); renderTable(); }, 120);
  });
  var filterTimer = 0;
  $('event-filter').addEventListener('input', function () {
    clearTimeout(filterTimer); filterTimer = setTimeout(function () { $('events').innerHTML = ''; connect(); }, 300);
  });
  window.addEventListener('resize', renderChart);
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', function () { renderChart(); });
  connect();
  refresh();
  setInterval(refresh, 2000);
})();
`
