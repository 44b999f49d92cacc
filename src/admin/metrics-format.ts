// Which exposition format a scrape asked for, read from its Accept header: the media ranges in order of their
// weight (`q`, 1 when absent, 0 when it is no number from 0 to 1, as client_golang's expfmt.Negotiate reads
// one; equal weights keep the header's order), the first that names OpenMetrics or the classic text format
// picks it. Unlike client_golang, a range of weight 0 is not acceptable (RFC 9110 §12.4.2). A scraper that prefers the classic
// text (`scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]`) gets it even though it also accepts
// OpenMetrics; nothing named (no Accept, `*/*`) is the classic text. Media types are case-insensitive.

export type MetricsFormat = 'openmetrics' | 'text'

/** More media ranges than a scraper sends are not read: the header is the client's. */
const MAX_RANGES = 32

export function negotiateMetricsFormat(accept: string | undefined): MetricsFormat {
  if (accept === undefined || accept === '') return 'text'
  const ranges: { format: MetricsFormat | undefined; q: number; at: number }[] = []
  let at = 0
  for (const range of accept.split(',', MAX_RANGES)) {
    const [type = '', ...params] = range.split(';')
    let q = 1
    for (const param of params) {
      const eq = param.indexOf('=')
      if (eq === -1 || param.slice(0, eq).trim().toLowerCase() !== 'q') continue
      const weight = Number(param.slice(eq + 1).trim())
      // RFC 9110 §12.4.2: 0 to 1; anything else (`q=`, `q=x`, `q=2`) is no weight the client can mean
      q = param.slice(eq + 1).trim() !== '' && weight >= 0 && weight <= 1 ? weight : 0
    }
    const mediaType = type.trim().toLowerCase()
    const format =
      mediaType === 'application/openmetrics-text'
        ? 'openmetrics'
        : mediaType === 'text/plain'
          ? 'text'
          : undefined
    ranges.push({ format, q, at: at++ })
  }
  ranges.sort((a, b) => b.q - a.q || a.at - b.at)
  for (const r of ranges) {
    if (r.q === 0) break
    if (r.format !== undefined) return r.format
  }
  return 'text'
}
