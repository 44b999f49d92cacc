// Diagnostics shared by `check`, the loader, hot reload and rule tests: one line each, FILE:LINE:COL.
export type Severity = 'error' | 'warning'

export interface Diagnostic {
  file: string
  /** 1-based */
  line: number
  /** 1-based */
  col: number
  message: string
  hint?: string
  severity: Severity
}

export function formatDiagnostic(d: Diagnostic): string {
  const prefix = d.severity === 'warning' ? 'warning: ' : ''
  return `${d.file}:${d.line}:${d.col} ${prefix}${d.message}${d.hint ? ` (hint: ${d.hint})` : ''}`
}

/** Levenshtein distance, bounded by the lengths of short config keys. */
export function editDistance(a: string, b: string): number {
  const prev = new Array<number>(b.length + 1)
  for (let j = 0; j <= b.length; j++) prev[j] = j
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!
    prev[0] = i
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1))
      diag = up
    }
  }
  return prev[b.length]!
}

/** The closest candidate when it is plausibly a typo of `word`. */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Number.POSITIVE_INFINITY
  const lower = word.toLowerCase()
  for (const c of candidates) {
    const d = editDistance(lower, c.toLowerCase())
    if (d < bestDistance) {
      best = c
      bestDistance = d
    }
  }
  const limit = Math.max(2, Math.floor(word.length / 3))
  return bestDistance <= limit ? best : undefined
}
