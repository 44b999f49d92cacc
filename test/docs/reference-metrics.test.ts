// docs/reference.md's metrics table is what dashboards and alerts are written from: its names, types and label
// sets are checked against what a running proxy exposes on /metrics (the demo's traffic, which reaches most
// families), both ways: every nhi_* family scraped is in the table with its type and, once it has samples,
// exactly its labels; every family in the table is scraped, except those the table says exist only under
// settings the demo does not use.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { ROOT, spawnDemo } from '../helpers/sidecar.ts'

const doc = readFileSync(join(ROOT, 'docs/reference.md'), 'utf8')

interface Documented {
  type: string
  labels: string[]
  /** the row names the setting the family exists under (OTLP export, `workers` > 1) */
  conditional: boolean
}

/** The rows of the table under "## Metrics": `| names | type | labels (notes): prose |`. */
function documentedFamilies(): Map<string, Documented> {
  const section = doc.slice(doc.indexOf('## Metrics'), doc.indexOf('### Workers'))
  const families = new Map<string, Documented>()
  for (const row of section.split('\n').filter((l) => l.startsWith('| `nhi_'))) {
    const [names, type, ...rest] = row.slice(2, -2).split(' | ')
    let labels = rest.join(' | ')
    while (/\([^()]*\)/.test(labels)) labels = labels.replace(/\([^()]*\)/g, '')
    const list = labels.split(':')[0]!.trim()
    const documented: Documented = {
      type: type!.trim(),
      labels: list === '—' ? [] : list.split(',').map((l) => l.trim()),
      conditional: /only while|only\)/.test(rest.join(' | ')),
    }
    for (const m of names!.matchAll(/`(nhi_\w+)`/g)) families.set(m[1]!, documented)
  }
  return families
}

interface Scraped {
  type: string
  labels: Set<string>
  samples: number
}

function scrapedFamilies(body: string): Map<string, Scraped> {
  const families = new Map<string, Scraped>()
  for (const line of body.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type) {
      families.set(type[1]!, { type: type[2]!, labels: new Set(), samples: 0 })
      continue
    }
    const sample = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? /.exec(line)
    if (!sample) continue
    const name = sample[1]!
    const family =
      families.get(name) ??
      families.get(name.replace(/_(bucket|sum|count)$/, '')) ??
      families.get(name.replace(/_(total|created)$/, ''))
    if (!family) continue
    family.samples++
    for (const label of (sample[2] ?? '').matchAll(/([a-zA-Z_]\w*)="(?:[^"\\]|\\.)*"/g))
      if (label[1] !== 'le') family.labels.add(label[1]!)
  }
  return families
}

t.test("the reference's metric families are the ones /metrics exposes", async (t) => {
  const documented = documentedFamilies()
  t.ok(documented.size >= 30, `${documented.size} families in the reference`)
  const demo = spawnDemo({ rate: 40 })
  t.teardown(() => demo.kill('SIGKILL'))
  const admin = (await demo.waitFor(/metrics\s+(http:\/\/127\.0\.0\.1:\d+)\/metrics/, 30_000))[1]!
  // the demo's traffic reaches every per-identity family within seconds
  const scraped = await eventually(
    async () => {
      const families = scrapedFamilies(await (await fetch(`${admin}/metrics`)).text())
      const withSamples = [
        'nhi_cost_total',
        'nhi_job_last_success_timestamp_seconds',
        'nhi_auth_failures_total',
      ]
      return withSamples.every((f) => (families.get(f)?.samples ?? 0) > 0) ? families : undefined
    },
    { timeoutMs: 30_000 },
  )
  for (const [name, family] of scraped) {
    if (!name.startsWith('nhi_')) continue
    const row = documented.get(name)
    if (!row) {
      t.fail(`${name} (${family.type}) is exposed but not in the reference's metrics table`)
      continue
    }
    t.equal(family.type, row.type, `${name} is a ${row.type}`)
    if (family.samples > 0)
      t.same([...family.labels].sort(), [...row.labels].sort(), `${name} labels: ${row.labels.join(', ')}`)
  }
  for (const [name, row] of documented)
    if (!row.conditional) t.ok(scraped.has(name), `${name} (reference) is exposed`)
  const sampled = [...scraped].filter(([n, f]) => n.startsWith('nhi_') && f.samples > 0).length
  t.ok(sampled >= 20, `${sampled} families with samples compared label by label`)
})
