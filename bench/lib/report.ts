// Bench reports: a Markdown table, the raw JSON, and a hand-written SVG bar chart of req/s.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { h2Markdown } from './h2.ts'
import type { BenchResult, ConfigResult, FixedRateResult, Target } from './harness.ts'

const fmt = (n: number | undefined, digits = 2) =>
  n === undefined || !Number.isFinite(n) ? '—' : n.toFixed(digits)
const int = (n: number) => Math.round(n).toLocaleString('en')

export function targetLine(t: Target): string {
  const sign = t.direction === 'min' ? '≥' : '≤'
  const margin = `${t.margin >= 0 ? '+' : ''}${fmt(t.margin)}${t.unit === '×' ? '' : ` ${t.unit}`}`
  return `${t.pass ? 'PASS' : 'MISS'}  ${t.name}: ${fmt(t.value)}${t.unit === '×' ? '×' : ` ${t.unit}`} (target ${sign} ${t.target}${t.unit === '×' ? '×' : ` ${t.unit}`}, margin ${margin})${t.note ? ` — ${t.note}` : ''}`
}

/** each round's proxy CPU per request: on a shared machine the spread says how far to trust the median */
function perRound(c: ConfigResult): string {
  const cpu = c.rounds.map((r) => r.proxyCpuUs).filter((x): x is number => x !== undefined)
  return cpu.length > 1 ? cpu.map((x) => x.toFixed(0)).join(' / ') : '—'
}

function row(c: ConfigResult): string {
  return `| ${c.id} | ${c.label} | ${c.tool} | ${int(c.rps)} | ${fmt(c.p50Ms)} | ${fmt(c.p99Ms)} | ${fmt(c.proxyCpuUs, 1)} | ${perRound(c)} | ${fmt(c.upstreamCpuUs, 1)} | ${int(c.requests)} | ${c.errors} / ${c.non2xx} |`
}

function fixedRateRow(x: FixedRateResult): string {
  const p99s = x.rounds.map((s) => s.p99Ms.toFixed(2)).join(' / ')
  return `| ${x.id} | ${x.label} | ${int(x.rate)} | ${fmt(x.p50Ms)} | ${fmt(x.p99Ms)} | ${p99s} | ${fmt(x.p999Ms)} | ${int(x.requests)} | ${x.errors} / ${x.non2xx} |`
}

function fixedRateSection(r: BenchResult): string[] {
  if (!r.fixedRate?.length) return []
  const rate = r.fixedRate[0]!.rate
  return [
    '',
    `## Latency at a fixed ${int(rate)} req/s (open loop, ${r.options.connections} connections)`,
    '',
    'The same requests on a fixed schedule below every configuration’s capacity (Node load generator): the',
    'latency a request sees through each proxy when it is not saturated. Medians over rounds.',
    '',
    '| id | configuration | req/s | p50 ms | p99 ms | … per round | p99.9 ms | requests | errors / non-2xx |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|',
    ...r.fixedRate.map(fixedRateRow),
  ]
}

function h2Section(r: BenchResult): string[] {
  if (!r.h2) return []
  // the targets are listed with the others below
  const table = h2Markdown({ ...r.h2, targets: [] }, targetLine).trimEnd()
  return ['', '## h2c configuration (unary gRPC calls)', '', table]
}

export function markdown(r: BenchResult): string {
  const m = r.machine
  const o = r.options
  const lines = [
    `# nhi-proxy bench — ${r.startedAt}`,
    '',
    `Machine: ${m.nproc} × ${m.cpu}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}, ${m.wrk}, ${m.nginx}; load average ${m.loadAvg.toFixed(1)} at start.`,
    `Run: ${o.rounds} interleaved round(s) × ${o.durationS} s per configuration, ${o.connections} connections, load generator, proxy and upstream on the same ${m.nproc} cores.`,
    '',
    '| id | configuration | load | req/s | p50 ms | p99 ms | proxy CPU µs/req | … per round | upstream CPU µs/req | requests | errors / non-2xx |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|',
    ...r.configs.map(row),
    ...(r.flood ? [row(r.flood)] : []),
    '',
    'Medians over rounds. CPU is utime+stime from /proc/<pid>/stat over each round divided by its requests (nginx: master + worker).',
    ...fixedRateSection(r),
    ...h2Section(r),
    '',
    '## Ratios',
    '',
    ...Object.entries(r.ratios).map(([k, v]) => `- ${k}: ${fmt(v)}`),
    '',
    '## Targets',
    '',
    '```',
    ...r.targets.map(targetLine),
    '```',
  ]
  if (r.coldStart)
    lines.push(
      '',
      `Cold start: ${r.coldStart.ms.map((x) => fmt(x, 0)).join(', ')} ms via \`${r.coldStart.how}\`.`,
    )
  if (r.notes.length) lines.push('', '## Notes', '', ...r.notes.map((n) => `- ${n}`))
  return `${lines.join('\n')}\n`
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

const NHI_IDS: ReadonlySet<string> = new Set(['c', 'd', 'e', 'flood'])

/**
 * Horizontal bars of req/s per configuration, nhi-proxy bars highlighted; below them, when the open-loop
 * rounds ran, p50 and p99 at the fixed rate per configuration.
 */
export function svgChart(r: BenchResult): string {
  const bars = [...r.configs, ...(r.flood ? [{ ...r.flood, id: 'flood' as const }] : [])]
  const max = Math.max(1, ...bars.map((b) => b.rps))
  const fixed = r.fixedRate ?? []
  const maxMs = Math.max(0.001, ...fixed.map((x) => x.p99Ms))
  const rowH = 30
  const left = 350
  const width = 880
  const plot = width - left - 110
  const top = 40
  const fixedTop = top + bars.length * rowH + 50
  const height = (fixed.length ? fixedTop + fixed.length * rowH : top + bars.length * rowH) + 30
  const label = (id: string, text: string, y: number) => {
    const full = `${id}: ${text}`
    const shown = full.length > 46 ? `${full.slice(0, 45)}…` : full
    return `<text x="${left - 8}" y="${y + 18}" text-anchor="end">${esc(shown)}</text>`
  }
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="12" y="24" font-size="15" font-weight="bold">req/s (median of ${r.options.rounds} rounds, ${r.options.connections} connections, ${r.machine.nproc} cores shared)</text>`,
  ]
  bars.forEach((b, i) => {
    const y = top + i * rowH
    const w = Math.max(1, (b.rps / max) * plot)
    parts.push(
      label(b.id, b.label, y),
      `<rect x="${left}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 10}" fill="${NHI_IDS.has(b.id) ? '#2b6cb0' : '#a0aec0'}"/>`,
      `<text x="${(left + w + 6).toFixed(1)}" y="${y + 18}">${int(b.rps)}</text>`,
    )
  })
  if (fixed.length) {
    parts.push(
      `<text x="12" y="${fixedTop - 14}" font-size="15" font-weight="bold">latency at a fixed ${int(fixed[0]!.rate)} req/s, open loop: p50 (dark) and p99 (light), ms</text>`,
    )
    fixed.forEach((x, i) => {
      const y = fixedTop + i * rowH
      const w50 = Math.max(1, (x.p50Ms / maxMs) * plot)
      const w99 = Math.max(1, (x.p99Ms / maxMs) * plot)
      const ours = NHI_IDS.has(x.id)
      parts.push(
        label(x.id, x.label, y),
        `<rect x="${left}" y="${y + 4}" width="${w99.toFixed(1)}" height="${rowH - 10}" fill="${ours ? '#90cdf4' : '#e2e8f0'}"/>`,
        `<rect x="${left}" y="${y + 4}" width="${w50.toFixed(1)}" height="${rowH - 10}" fill="${ours ? '#2b6cb0' : '#a0aec0'}"/>`,
        `<text x="${(left + w99 + 6).toFixed(1)}" y="${y + 18}">${fmt(x.p50Ms)} / ${fmt(x.p99Ms)}</text>`,
      )
    })
  }
  parts.push(
    `<text x="12" y="${height - 10}" fill="#4a5568">blue: nhi-proxy; grey: baselines. p99.9 and CPU per request in latest.md</text>`,
    '</svg>',
  )
  return `${parts.join('\n')}\n`
}

export async function writeResults(dir: string, r: BenchResult, name = 'latest'): Promise<string[]> {
  await mkdir(dir, { recursive: true })
  const files = [join(dir, `${name}.md`), join(dir, `${name}.json`), join(dir, `${name}.svg`)]
  await writeFile(files[0]!, markdown(r))
  await writeFile(files[1]!, `${JSON.stringify(r, null, 2)}\n`)
  await writeFile(files[2]!, svgChart(r))
  return files
}
