// A Prometheus text / OpenMetrics body as families of samples keyed by `name{labels}` as rendered: the
// reference the pod's merge tests compare against (label values may hold braces, quotes and backslashes).
export interface ExpositionSample {
  /** `name{labels}` as rendered (or `name` without labels) */
  prefix: string
  name: string
  labels: string
  value: number
}

export interface ExpositionFamily {
  /** family name, counters without `_total` (as OpenMetrics names them), so both formats share keys */
  base: string
  type: string
  samples: ExpositionSample[]
}

const HEADER = /^# (HELP|TYPE|UNIT) (\S+)(?: (.*))?$/
/** name, labels (quoted values may hold `}`), value; an exemplar or timestamp after it is ignored */
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? +(\S+)/

function value(text: string): number {
  if (text === '+Inf') return Number.POSITIVE_INFINITY
  if (text === '-Inf') return Number.NEGATIVE_INFINITY
  return text === 'NaN' ? Number.NaN : Number(text)
}

export function parseExposition(body: string): ExpositionFamily[] {
  const families: ExpositionFamily[] = []
  let current: (ExpositionFamily & { headerName: string }) | undefined
  for (const line of body.split('\n')) {
    if (line === '' || line === '# EOF') continue
    if (line.startsWith('#')) {
      const m = HEADER.exec(line)
      if (!m) continue
      const name = m[2]!
      if (current?.headerName !== name) {
        current = { base: name, headerName: name, type: 'untyped', samples: [] }
        families.push(current)
      }
      if (m[1] === 'TYPE') {
        current.type = m[3] ?? 'untyped'
        if (current.type === 'counter') current.base = name.replace(/_total$/, '')
      }
      continue
    }
    const m = SAMPLE.exec(line)
    if (!m || !current) continue
    const labels = m[2] ?? ''
    current.samples.push({
      prefix: labels === '' ? m[1]! : `${m[1]}{${labels}}`,
      name: m[1]!,
      labels,
      value: value(m[3]!),
    })
  }
  return families
}
