// A minimal client of the Prometheus HTTP API (instant queries, /api/v1/query) for `inventory` and `fleet`:
// every nhi_* series every sidecar exported, read from the Prometheus (or Thanos/Mimir) users already run.
// Errors are PromError with the exit code of docs/reference.md "Command line" and a message without a stack.
import { redactUrl } from '../config/redact.ts'
import { formatDuration } from '../util/duration.ts'
import { hostNotFound, isHostNotFound } from '../util/listen-problem.ts'
import { readBounded } from '../util/read-bounded.ts'

export class PromError extends Error {
  constructor(
    message: string,
    readonly exitCode: 1 | 2,
  ) {
    super(message)
  }
}

export interface Sample {
  labels: Record<string, string>
  value: number
}

interface ApiBody {
  status?: string
  errorType?: string
  error?: string
  warnings?: unknown
  data?: { resultType?: unknown; result?: unknown }
}

/**
 * The Fetch standard's "bad ports" (https://fetch.spec.whatwg.org/#bad-port): fetch() refuses to connect to
 * them whatever the server, with a bare "bad port". Ports of other protocols (SMTP 25, X11 6000, IRC 6667…)
 * that a browser must not be made to talk to; Prometheus on one of them cannot be queried from here.
 */
const FETCH_BAD_PORTS = new Set([
  1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104,
  109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515,
  526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049,
  3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
])

const badPortProblem = (port: string) =>
  `port ${port} is one fetch refuses to connect to (reserved for another protocol); put Prometheus on another port, or reach it through one`

/** Validates the --prometheus URL: http(s), no query or fragment; a trailing path (e.g. /prometheus) is kept. */
export function prometheusBase(text: string): string {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    // the text may still hold a `user:password@` (the part a parser could not make sense of is often there)
    throw new PromError(
      `--prometheus ${JSON.stringify(redactUrl(text))} is not a URL (e.g. http://prometheus:9090)`,
      1,
    )
  }
  // `prometheus:9090` parses as scheme "prometheus:"; only such a bare HOST:PORT is echoed (it holds no password)
  if (url.protocol !== 'http:' && url.protocol !== 'https:' && /^[^/:?#@]+:\d+\/?$/.test(text))
    throw new PromError(
      `--prometheus must be an http:// or https:// URL, ${JSON.stringify(text)} has no scheme (hint: http://${text})`,
      1,
    )
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new PromError(`--prometheus must be an http:// or https:// URL, got ${url.protocol}`, 1)
  if (url.search || url.hash) throw new PromError('--prometheus takes no query string or fragment', 1)
  // a bad flag, found before any query rather than as a bare "bad port" from each of them
  if (url.port !== '' && FETCH_BAD_PORTS.has(Number(url.port)))
    throw new PromError(`--prometheus: ${badPortProblem(url.port)}`, 1)
  // the user and password are sent decoded (PrometheusClient): one that cannot be decoded is a bad flag here,
  // not a failure of every query later
  try {
    decodeURIComponent(url.username)
    decodeURIComponent(url.password)
  } catch {
    throw new PromError('--prometheus has a user or password with a malformed %-escape (write % as %25)', 1)
  }
  return url.href.replace(/\/+$/, '')
}

/** The window as PromQL writes it, in whole seconds (at least 1s): 90s, 10m, 24h, 7d. */
export function promDuration(ms: number): string {
  return formatDuration(Math.max(1, Math.round(ms / 1000)) * 1000)
}

export class PrometheusClient {
  /** the base URL without credentials: what messages and the JSON documents show */
  readonly base: string
  /** `user:password@` of the URL (Prometheus behind basic auth), sent as a header: fetch refuses them in URLs */
  private readonly authorization: string | undefined
  /**
   * What Prometheus (or Thanos/Mimir) said alongside a result it answered anyway (a store that did not answer,
   * a partial response): the data may be incomplete, and the one who reads it must know. Each once, printable.
   */
  readonly warnings: string[] = []

  constructor(
    base: string,
    private readonly timeoutMs: number,
    /** evaluation time of every query, in seconds: one consistent snapshot */
    readonly time: number = Date.now() / 1000,
  ) {
    const url = new URL(base)
    if (url.username || url.password) {
      const user = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`
      this.authorization = `Basic ${Buffer.from(user).toString('base64')}`
      url.username = ''
      url.password = ''
    }
    this.base = url.href.replace(/\/+$/, '')
  }

  /** An instant query at `time`; only vector results. */
  async query(promql: string): Promise<Sample[]> {
    const body = new URLSearchParams({ query: promql, time: String(this.time) })
    const url = `${this.base}/api/v1/query`
    let res: Response
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
          ...(this.authorization ? { authorization: this.authorization } : {}),
        },
        body,
        signal: AbortSignal.timeout(this.timeoutMs),
      })
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } }
      if (e.name === 'TimeoutError' || e.name === 'AbortError')
        throw new PromError(`Prometheus at ${this.base} did not answer within ${this.timeoutMs} ms`, 2)
      const code = e.cause?.code
      const { hostname } = new URL(this.base)
      // getaddrinfo's code alone names neither the problem nor the host; fetch's "bad port" not the port
      const why = isHostNotFound(code)
        ? hostNotFound(hostname)
        : e.cause?.message === 'bad port'
          ? // the base URL's own port was checked (prometheusBase): this one came in a redirect
            'redirected to a port fetch refuses to connect to (reserved for another protocol)'
          : (code ?? e.cause?.message ?? e.message)
      throw new PromError(`cannot reach Prometheus at ${this.base}: ${why}`, 2)
    }
    // the deadline covers the body too: one that stalls is a timeout, one that never ends is cut at the bound
    let answer: Buffer | undefined
    try {
      // Node's web streams are async iterable; the DOM typing of fetch's body does not say so
      answer = res.body
        ? await readBounded(res.body as unknown as AsyncIterable<Uint8Array>, MAX_ANSWER_BYTES)
        : Buffer.alloc(0)
    } catch (err) {
      const e = err as Error
      if (e.name === 'TimeoutError' || e.name === 'AbortError')
        throw new PromError(`Prometheus at ${this.base} did not answer within ${this.timeoutMs} ms`, 2)
      answer = Buffer.alloc(0)
    }
    if (answer === undefined)
      throw new PromError(
        `Prometheus at ${this.base} answered more than ${MAX_ANSWER_BYTES / 1024 / 1024} MiB (query: ${promql})`,
        2,
      )
    const text = answer.toString('utf8')
    let parsed: ApiBody | undefined
    try {
      parsed = JSON.parse(text) as ApiBody
    } catch {
      parsed = undefined
    }
    if (!res.ok || parsed?.status !== 'success') {
      const error = parsed?.error
      // an error may quote label values (what clients presented), a proxy's page anything: never raw to a terminal
      const detail = printable(typeof error === 'string' ? error : text.slice(0, 200).trim())
      throw new PromError(
        `Prometheus at ${this.base} answered HTTP ${res.status}${detail ? `: ${detail}` : ''} (query: ${promql})`,
        2,
      )
    }
    const data = parsed.data
    if (data?.resultType !== 'vector' || !Array.isArray(data.result))
      throw new PromError(
        `Prometheus at ${this.base} answered an unexpected ${printable(String(data?.resultType))} result`,
        2,
      )
    if (Array.isArray(parsed.warnings))
      for (const w of parsed.warnings) {
        const shown = printable(String(w))
        if (!this.warnings.includes(shown)) this.warnings.push(shown)
      }
    const samples: Sample[] = []
    for (const r of data.result as unknown[]) {
      if (!isSample(r))
        throw new PromError(`Prometheus at ${this.base} answered a malformed result (query: ${promql})`, 2)
      const value = Number(r.value[1])
      if (!Number.isNaN(value)) samples.push({ labels: r.metric, value })
    }
    return samples
  }
}

/** the most of one answer read (a fleet's largest query is a few series per identity and service) */
export const MAX_ANSWER_BYTES = 128 * 1024 * 1024
/** one sample of an instant vector as the API documents it: string labels, [time, "value"] */
function isSample(r: unknown): r is { metric: Record<string, string>; value: [number, string] } {
  if (typeof r !== 'object' || r === null) return false
  const { metric, value } = r as { metric?: unknown; value?: unknown }
  if (typeof metric !== 'object' || metric === null || Array.isArray(metric)) return false
  if (!Object.values(metric).every((v) => typeof v === 'string')) return false
  return Array.isArray(value) && value.length === 2 && typeof value[1] === 'string'
}

/**
 * Increase of a counter over the window at the evaluation time, counting a series born inside the window
 * from 0 (Prometheus's increase() loses a new series' first value, which is most of a short-lived caller).
 * A counter reset (sidecar restart) inside the window counts as its last value.
 */
export function windowIncrease(selector: string, window: string): string {
  const last = `last_over_time(${selector}[${window}])`
  return `((${last} - ${selector} offset ${window}) >= 0 or ${last})`
}

/** Seconds since the epoch → `2026-01-02T03:04:05Z`; undefined for a missing or non-finite value. */
export function isoSeconds(s: number | undefined): string | undefined {
  if (s === undefined || !Number.isFinite(s) || s <= 0) return undefined
  return new Date(Math.round(s) * 1000).toISOString().replace('.000Z', 'Z')
}

/** A whole number of seconds as "3d4h", "5m", "12s" (the largest two units). */
export function humanSeconds(total: number): string {
  let s = Math.max(0, Math.round(total))
  const parts: string[] = []
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3_600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    if (s >= size || (unit === 's' && parts.length === 0)) {
      parts.push(`${Math.floor(s / size)}${unit}`)
      s %= size
    }
  }
  return parts.slice(0, 2).join('')
}

// C0 and C1 controls, DEL, the line/paragraph separators, and every character Unicode says to show as nothing
// (Default_Ignorable_Code_Point: bidi marks, overrides and isolates, zero-width spaces and joiners, the soft
// hyphen, variation selectors, the invisible tag characters): printed as is, `admin\u200b` reads as `admin`
const UNPRINTABLE = /[\p{Cc}\p{Default_Ignorable_Code_Point}\u2028\u2029]/gu

/**
 * Label values (and `explain`'s report) as text for a terminal: they are what clients presented (certificate
 * subjects, token claims, headers), and a control character printed as is would drive the terminal (retitle it, clear the screen)
 * or start a line that reads as another row, and an invisible one would make a name look like another. Each is shown as
 * its escape instead (\x1b, \n, \u202e, \u{e0041}).
 */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0)!
    if (c === '\n') return '\\n'
    if (c === '\r') return '\\r'
    if (c === '\t') return '\\t'
    if (code <= 0xff) return `\\x${code.toString(16).padStart(2, '0')}`
    return code <= 0xffff ? `\\u${code.toString(16)}` : `\\u{${code.toString(16)}}`
  })
}

/** Left-aligned columns separated by two spaces; the first row is the header. Cells are made printable. */
export function renderTable(rows: string[][]): string[] {
  const shown = rows.map((row) => row.map(printable))
  const widths: number[] = []
  for (const row of shown) {
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, cell.length)
  }
  return shown.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  )
}

/** One RFC 4180 field; a value a spreadsheet would run as a formula gets a leading apostrophe. */
export function csvField(value: string): string {
  const safe = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe
}

/** Requests counted as errors in `inventory` and `fleet`: 5xx, 401 and 403 (as the job failure metric). */
export const ERROR_CODES = '5..|401|403'
