// Styles of the live view. Light and dark palettes follow prefers-color-scheme; colours keep WCAG AA
// contrast for text on panels in both.
export const UI_STYLES = String.raw`
:root {
  color-scheme: light dark;
  --bg: #f4f6fa; --panel: #ffffff; --panel-2: #f0f3f8; --border: #d9dfe8; --text: #18202c;
  --muted: #556274; --accent: #2563eb; --good: #15803d; --warn: #b45309; --bad: #b91c1c;
  --human: #2563eb; --service: #16a34a; --job: #7c3aed; --bot: #d97706; --agent: #db2777; --unknown: #64748b;
  --row-hover: #eef3fb; --selected: #dbe7fd; --shadow: 0 1px 2px rgba(16, 24, 40, .06);
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --panel: #161b22; --panel-2: #1c232d; --border: #2a3340; --text: #e6edf3;
    --muted: #9aa7b6; --accent: #6ea8fe; --good: #4ade80; --warn: #fbbf24; --bad: #f87171;
    --human: #60a5fa; --service: #4ade80; --job: #a78bfa; --bot: #fbbf24; --agent: #f472b6; --unknown: #94a3b8;
    --row-hover: #1f2732; --selected: #1e3a5f; --shadow: none;
  }
}
* { box-sizing: border-box; }
html, body { height: 100%; margin: 0; }
body {
  background: var(--bg); color: var(--text);
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  display: flex; flex-direction: column; overflow: hidden;
}
header {
  display: flex; align-items: center; gap: 20px; padding: 8px 16px; height: 56px; flex: none;
  background: var(--panel); border-bottom: 1px solid var(--border);
}
.brand { display: flex; align-items: baseline; gap: 8px; min-width: 190px; }
.brand h1 { font-size: 16px; margin: 0; letter-spacing: .2px; }
.brand .service { color: var(--muted); font-size: 12px; }
.stats { display: flex; gap: 8px; flex: 1; }
.stat { background: var(--panel-2); border: 1px solid var(--border); border-radius: 8px; padding: 3px 12px; min-width: 96px; }
.stat .label { font-size: 10.5px; text-transform: uppercase; letter-spacing: .6px; color: var(--muted); }
.stat .value { font-size: 16px; font-weight: 600; font-variant-numeric: tabular-nums; }
.status { display: flex; align-items: center; gap: 6px; color: var(--muted); font-size: 12px; white-space: nowrap; }
.dot { width: 8px; height: 8px; border-radius: 50%; background: var(--muted); display: inline-block; flex: none; }
.status.live .dot { background: var(--good); box-shadow: 0 0 0 3px color-mix(in srgb, var(--good) 25%, transparent); }
.status.down .dot { background: var(--bad); }
main {
  flex: 1; min-height: 0; display: grid; gap: 10px; padding: 10px;
  grid-template-columns: minmax(0, 1fr) minmax(0, 1fr) 380px; grid-template-rows: 236px minmax(0, 1fr);
  grid-template-areas: "chart graph side" "table table side";
}
.panel {
  background: var(--panel); border: 1px solid var(--border); border-radius: 10px; box-shadow: var(--shadow);
  display: flex; flex-direction: column; min-height: 0; min-width: 0; overflow: hidden;
}
.panel > h2 {
  display: flex; align-items: center; gap: 8px; margin: 0; padding: 8px 12px; font-size: 12px; font-weight: 600;
  text-transform: uppercase; letter-spacing: .6px; color: var(--muted); border-bottom: 1px solid var(--border); flex: none;
}
.panel > h2 .spacer { flex: 1; }
#chart-panel { grid-area: chart; }
#graph-panel { grid-area: graph; }
#table-panel { grid-area: table; }
#side { grid-area: side; display: flex; flex-direction: column; gap: 10px; min-height: 0; }
#events-panel { flex: 1; }
#audit-panel { height: 300px; flex: none; }
.chart-body { position: relative; flex: 1; min-height: 0; padding: 6px 10px 8px; display: flex; flex-direction: column; }
#split-chart canvas { width: 100%; flex: 1; min-height: 0; display: block; }
#split-chart { flex: 1; min-height: 0; display: flex; flex-direction: column; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 11.5px; color: var(--muted); padding-bottom: 4px; }
.legend b { color: var(--text); font-weight: 600; }
.swatch { width: 10px; height: 10px; border-radius: 2px; display: inline-block; margin-right: 4px; vertical-align: -1px; }
#graph { flex: 1; min-height: 0; overflow: hidden; padding: 6px 8px; }
#graph svg { display: block; width: 100%; height: 100%; }
#graph .node rect { fill: var(--panel-2); stroke: var(--border); }
#graph .node text, #graph .group-label { fill: var(--text); font-size: 11px; }
#graph .group-label { font-weight: 600; font-size: 10.5px; letter-spacing: .5px; text-transform: uppercase; }
#graph .group rect { fill: none; stroke-width: 1.2; rx: 8; }
#graph .muted-label { fill: var(--muted); font-size: 11px; }
#graph .callee rect { fill: color-mix(in srgb, var(--accent) 18%, var(--panel)); stroke: var(--accent); stroke-width: 1.5; }
#graph .edge { fill: none; opacity: .85; }
#graph .edge.internal-verified, #graph .group.internal-verified rect { stroke: var(--good); }
#graph .edge.unverified, #graph .group.unverified rect { stroke: var(--warn); }
#graph .edge.unverified { stroke-dasharray: 6 4; }
#graph .edge.external, #graph .group.external rect { stroke: var(--bad); }
#graph .edge.external { stroke-dasharray: 2 3; }
#graph .group.internal-verified .group-label { fill: var(--good); }
#graph .group.unverified .group-label { fill: var(--warn); }
#graph .group.external .group-label { fill: var(--bad); }
.graph-legend { display: flex; gap: 12px; font-size: 11px; color: var(--muted); font-weight: 400; text-transform: none; letter-spacing: 0; }
.line { display: inline-block; width: 18px; height: 0; border-top: 2px solid; vertical-align: middle; margin-right: 4px; }
.line.internal-verified { border-color: var(--good); }
.line.unverified { border-color: var(--warn); border-top-style: dashed; }
.line.external { border-color: var(--bad); border-top-style: dotted; }
input[type=search] {
  font: inherit; color: var(--text); background: var(--panel-2); border: 1px solid var(--border); border-radius: 6px;
  padding: 3px 8px; width: 200px; text-transform: none; letter-spacing: 0;
}
input[type=search]:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
.table-wrap { flex: 1; min-height: 0; overflow: auto; }
table { width: 100%; border-collapse: separate; border-spacing: 0; font-variant-numeric: tabular-nums; }
thead th {
  position: sticky; top: 0; z-index: 1; background: var(--panel); text-align: left; font-weight: 600; font-size: 11.5px;
  color: var(--muted); padding: 6px 6px; border-bottom: 1px solid var(--border); cursor: pointer; user-select: none; white-space: nowrap;
}
thead th.num, td.num { text-align: right; }
thead th[aria-sort=ascending]::after { content: " \25B2"; font-size: 9px; }
thead th[aria-sort=descending]::after { content: " \25BC"; font-size: 9px; }
tbody td { padding: 4px 6px; border-bottom: 1px solid var(--border); white-space: nowrap; font-size: 12.5px; }
tbody tr:hover { background: var(--row-hover); }
td.name { max-width: 190px; overflow: hidden; text-overflow: ellipsis; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 11px; font-weight: 600; line-height: 17px; border: 1px solid; }
.kind-human { color: var(--human); } .kind-service { color: var(--service); } .kind-job { color: var(--job); }
.kind-bot { color: var(--bot); } .kind-agent { color: var(--agent); } .kind-unknown { color: var(--unknown); }
.ok { color: var(--good); } .warn { color: var(--warn); } .bad { color: var(--bad); } .muted { color: var(--muted); }
.footnote { padding: 4px 12px; font-size: 11px; color: var(--muted); border-top: 1px solid var(--border); flex: none; }
#events { list-style: none; margin: 0; padding: 0; overflow: auto; flex: 1; min-height: 0; }
#events li {
  display: grid; grid-template-columns: 58px 38px minmax(0, 1fr) 52px; gap: 6px; align-items: center;
  padding: 3px 10px; border-bottom: 1px solid var(--border); cursor: pointer; font-size: 12px;
}
#events li:hover { background: var(--row-hover); }
#events li.selected { background: var(--selected); }
#events li:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
#events .time { color: var(--muted); font-variant-numeric: tabular-nums; font-size: 11px; }
#events .what { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#events .who { display: block; font-size: 11px; color: var(--muted); overflow: hidden; text-overflow: ellipsis; }
#events .ms { text-align: right; color: var(--muted); font-variant-numeric: tabular-nums; font-size: 11px; }
.code { font-weight: 700; font-variant-numeric: tabular-nums; }
.code.s2, .code.s3 { color: var(--good); } .code.s4 { color: var(--warn); } .code.s5 { color: var(--bad); }
#audit-detail { overflow: auto; flex: 1; min-height: 0; padding: 6px 12px; font-size: 12px; }
#audit-detail dl { display: grid; grid-template-columns: 110px minmax(0, 1fr); gap: 2px 10px; margin: 0; }
#audit-detail dt { color: var(--muted); }
#audit-detail dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
.empty { color: var(--muted); padding: 12px; text-align: center; }
/* Narrow windows and zoomed pages (1366 px at 200 % is 683 CSS px): one column that scrolls as a page, each
   panel a height of its own, instead of a fixed three-column grid squeezed to nothing. */
@media (max-width: 1000px), (max-height: 560px) {
  body { overflow: auto; height: auto; }
  header { height: auto; flex-wrap: wrap; gap: 8px; }
  .stats { flex-wrap: wrap; }
  main {
    grid-template-columns: minmax(0, 1fr); grid-template-rows: 236px 236px 420px auto;
    grid-template-areas: "chart" "graph" "table" "side";
  }
  #side { min-height: 0; }
  #events-panel { height: 360px; flex: none; }
}
`
