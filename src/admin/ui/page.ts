// The live web view served on /ui: one self-contained HTML document (no CDN, no build step).
import { UI_SCRIPT } from './script.ts'
import { UI_STYLES } from './styles.ts'

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nhi-proxy · live identities</title>
<link rel="icon" href="data:,">
<style>__STYLES__</style>
</head>
<body>
<header>
  <div class="brand"><h1>nhi-proxy</h1><span class="service">live identities</span></div>
  <div class="stats">
    <div class="stat"><div class="label">Identities</div><div class="value" id="stat-identities">–</div></div>
    <div class="stat"><div class="label">Requests/s</div><div class="value" id="stat-rps">–</div></div>
    <div class="stat"><div class="label">Human</div><div class="value" id="stat-human">–</div></div>
    <div class="stat"><div class="label">Machine</div><div class="value" id="stat-machine">–</div></div>
    <div class="stat"><div class="label">Errors</div><div class="value" id="stat-errors">–</div></div>
  </div>
  <div class="status" id="live-status"><i class="dot"></i><span id="live-text">connecting…</span></div>
</header>
<main>
  <section class="panel" id="chart-panel" aria-labelledby="chart-title">
    <h2 id="chart-title">Human vs machine traffic</h2>
    <div class="chart-body" id="split-chart" data-testid="split-chart">
      <div class="legend" id="split-legend"></div>
      <canvas id="split-canvas" role="img" aria-label="Requests per second by identity kind over the last five minutes"></canvas>
    </div>
  </section>
  <section class="panel" id="graph-panel" aria-labelledby="graph-title">
    <h2 id="graph-title">Trust boundaries<span class="spacer"></span>
      <span class="graph-legend"><span><i class="line internal-verified"></i>verified</span><span><i class="line unverified"></i>unverified</span><span><i class="line external"></i>external</span></span>
    </h2>
    <div id="graph" data-testid="graph"><div class="empty">No traffic yet</div></div>
  </section>
  <section class="panel" id="table-panel" aria-labelledby="table-title">
    <h2 id="table-title">Identities<span class="spacer"></span>
      <input type="search" id="identity-search" placeholder="Search name, kind, team…" aria-label="Search identities">
    </h2>
    <div class="table-wrap">
      <table id="identity-table" data-testid="identity-table">
        <thead><tr>
          <th data-sort="name" scope="col">Identity</th>
          <th data-sort="kind" scope="col">Kind</th>
          <th data-sort="source" scope="col">Source</th>
          <th data-sort="verified" scope="col">Verified</th>
          <th data-sort="rps" scope="col" class="num">Req/s</th>
          <th data-sort="errors" scope="col" class="num">Errors</th>
          <th data-sort="p95" scope="col" class="num">p95</th>
          <th data-sort="bytes" scope="col" class="num">In / out</th>
          <th data-sort="cost" scope="col" class="num">Cost</th>
          <th data-sort="lastSeen" scope="col">Last seen</th>
          <th data-sort="expiry" scope="col" title="Earliest expiry of the presented credential">Expires</th>
        </tr></thead>
        <tbody id="identity-rows"></tbody>
      </table>
    </div>
    <div class="footnote" id="table-count"></div>
  </section>
  <div id="side">
    <section class="panel" id="events-panel" aria-labelledby="events-title">
      <h2 id="events-title">Live requests<span class="spacer"></span>
        <input type="search" id="event-filter" placeholder="Filter by identity" aria-label="Filter events by identity">
      </h2>
      <ul id="events" data-testid="events" aria-live="off"></ul>
    </section>
    <section class="panel" id="audit-panel" aria-labelledby="audit-title">
      <h2 id="audit-title">Audit record</h2>
      <div id="audit-detail" data-testid="audit-detail"><div class="empty">Select a request to see its audit record</div></div>
    </section>
  </div>
</main>
<script>__SCRIPT__</script>
</body>
</html>
`

export const UI_PAGE = HTML.replace('__STYLES__', () => UI_STYLES).replace('__SCRIPT__', () => UI_SCRIPT)
