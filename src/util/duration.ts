// Durations in config are strings like "500ms", "30s", "5m", "24h", "7d" (or a bare number of seconds).
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/

/** The longest delay a Node timer holds (about 24.8 days): setTimeout fires a longer one after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** Returns milliseconds, or undefined when the text is not a duration. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value * 1000 : undefined
  const m = DURATION_RE.exec(value.trim())
  if (!m) return undefined
  return Number(m[1]) * UNIT_MS[m[2]!]!
}

export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`
  }
  return `${ms}ms`
}
