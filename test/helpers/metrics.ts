// Parse Prometheus text exposition into samples, so tests assert on real /metrics values.
import { type EventuallyOptions, eventually } from './eventually.ts'

export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = []
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const m = LINE.exec(line)
    if (!m) continue
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(LABEL)) {
      labels[l[1]!] = l[2]!.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\')
    }
    out.push({ name: m[1]!, labels, value: Number(m[3]) })
  }
  return out
}

/** Sum of samples named `name` whose labels include all of `where`. */
export function metricValue(samples: Sample[], name: string, where: Record<string, string> = {}): number {
  let sum = 0
  for (const s of samples) {
    if (s.name !== name) continue
    if (Object.entries(where).every(([k, v]) => s.labels[k] === v)) sum += s.value
  }
  return sum
}

export function seriesCount(samples: Sample[], name: string): number {
  return samples.filter((s) => s.name === name).length
}

export async function scrape(adminUrl: string): Promise<Sample[]> {
  const res = await fetch(`${adminUrl}/metrics`)
  return parseMetrics(await res.text())
}

/**
 * Scrapes `/metrics` until `ready` holds for the samples and resolves with those samples. The proxy records a
 * request (every per-request counter moves) when its downstream response closes, which can come after the
 * client already has the answer and has sent its scrape: one immediate scrape can miss the last requests.
 * Wait for the count to reach (`>=`) what is expected, then assert the exact value on the samples returned,
 * so an over-count still fails. When `timeoutMs` runs out it resolves with one last scrape, so the caller's
 * assertions fail with their own messages and the values seen.
 */
export async function scrapeUntil(
  adminUrl: string,
  ready: (samples: Sample[]) => boolean,
  what: string,
  opts: Omit<EventuallyOptions, 'what'> = {},
): Promise<Sample[]> {
  return eventually(
    async () => {
      const samples = await scrape(adminUrl)
      return ready(samples) ? samples : undefined
    },
    { ...opts, what },
  ).catch(() => scrape(adminUrl))
}
