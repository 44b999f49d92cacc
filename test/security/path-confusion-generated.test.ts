// Path confusion from the attacker's side, on generated request targets, against a real nginx upstream: the
// route the proxy's rules and policy matched must be the route the upstream serves. The policy denies
// `/admin/**` and `/internal` to anonymous callers; nginx (its defaults: merge_slashes on, no regex
// locations) answers each location with a marker naming the location it matched and what it made of the
// target ($uri: its own decoding and normalization; $request_uri: what it received). Targets mix segments of
// the protected and unprotected names with every encoding trick: escaped letters and dots in either case,
// double encoding (%252e), overlong UTF-8 (%c0%ae), `;` parameters, `//`, `/./`, `/../` and their escaped
// spellings, backslashes, `#`, a `?` starting the query, trailing dots and spaces, raw bytes (which an
// HTTP/2 :path can carry), paths longer than nginx's header buffers, and absolute-form; each is sent over
// HTTP/1.1 and h2c. For every request:
//   - nginx never serves a protected location to a request the proxy let through (the trust invariant);
//   - a denied request was decided on a protected path;
//   - what nginx received is the path the proxy matched (the audit line's `path`) with the query as sent,
//     and nginx's $uri is that path as nginx decodes it, apart from DOCUMENTED_DIFFERENCES;
//   - the forwarded path is normal: normalizing it again gives itself.
// In-process, over many more targets: normalization is idempotent, and on targets of plain segments and
// dot segments (literal or escaped) it resolves dots as the WHATWG URL parser does.
import { connect as http2Connect } from 'node:http2'
import fc from 'fast-check'
import t from 'tap'
import { normalizePath } from '../../src/proxy/path.ts'
import { eventually } from '../helpers/eventually.ts'
import { mapLimit } from '../helpers/limit.ts'
import { rawExchange } from '../helpers/net.ts'
import { skipWithoutNginx, startNginx } from '../helpers/nginx.ts'
import { checkBothSides, checkProperty, PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** generated targets, each sent over HTTP/1.1 and over h2c: a few seconds on a loaded machine */
const TARGETS = 300
const CONCURRENCY = 6
const HOST = 'x'

const POLICY = {
  mode: 'enforce',
  rules: [
    { name: 'admin', route: '/admin/**', allow: [{ identity: 'nobody' }] },
    { name: 'internal', route: '/internal', allow: [{ identity: 'nobody' }] },
  ],
}

/** what the policy protects, on a normalized path (a trailing slash is optional on routes and paths) */
const isProtected = (path: string) => /^\/admin(\/|$)/.test(path) || /^\/internal\/?$/.test(path)

/** nginx's locations: the protected ones answer with their name, the default one echoes the target too */
const PROTECTED_LOCATIONS = new Set(['admin', 'admin-exact', 'internal'])
const ECHO = 'uri=$uri\\nrequest_uri=$request_uri\\nend\\n'
const NGINX_SERVER = (listen: string) => `    listen 127.0.0.1:${listen};
    default_type text/plain;
    location /admin/ { return 200 "location=admin\\n${ECHO}"; }
    location = /admin { return 200 "location=admin-exact\\n${ECHO}"; }
    location = /internal { return 200 "location=internal\\n${ECHO}"; }
    location / { return 200 "location=default\\n${ECHO}"; }`
const SERVED = /location=([a-z-]+)\nuri=([^\n]*)\nrequest_uri=([^\n]*)\nend\n/
/** the error page nginx answers with when it refuses a request itself */
const NGINX_ERROR_PAGE = /<center>nginx[^<]*<\/center>/

// Where nginx's $uri and the proxy's path differ on purpose, each harmless:
//  - nginx decodes every escape in $uri; the proxy decodes only the unreserved characters and those a segment
//    holds as they are (docs "Deviations"), keeping the others encoded in upper-case hex, because servers
//    disagree on what they mean: `%3F` is "?" to nginx's $uri but starts the query to a server that decodes
//    before splitting, `%3B` is ";" (path parameters to Tomcat), `%25` "%" (which a second decoding reads
//    again), `%C0%AE` an overlong "." to a lax UTF-8 decoder. nginx reads none of these as a separator or a
//    dot (it never decodes twice, and its decoded "%", "#" and "?" are literal), so the location it picks
//    from its $uri is the one the proxy's path names. Modelled by nginxDecoded.
//  - nginx refuses a request line longer than its header buffers (large_client_header_buffers, 8 KiB), which
//    the proxy's limit (limits.maxHeaderBytes, 16 KiB) lets through: 414 over HTTP/1.1, a reset stream over
//    HTTP/2 (the proxy answers 502). Refused either way, never served.
const DOCUMENTED_DIFFERENCES = [
  'nginx decodes every escape the proxy keeps encoded (nginxDecoded)',
  'nginx refuses a request line longer than 8 KiB the proxy forwards (414, or 502 through h2c)',
]
/** below this, nginx has no reason to refuse a forwarded path for its length */
const NGINX_REQUEST_LINE = 8 * 1024 - 64

/** the forwarded path as nginx decodes it into $uri: every escape, one pass, as latin1 bytes */
const nginxDecoded = (path: string) =>
  path.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)))

// ---- the grammar ------------------------------------------------------------------------------------------

const hex = (code: number, lower: boolean) => {
  const h = code.toString(16).padStart(2, '0')
  return `%${lower ? h : h.toUpperCase()}`
}
/** the two-byte overlong UTF-8 form of an ASCII character (RFC 3629 forbids it; lax decoders accept it) */
const overlong = (code: number, lower: boolean) =>
  hex(0xc0 | (code >> 6), lower) + hex(0x80 | (code & 0x3f), lower)

type Spelling = 'plain' | 'escape' | 'escape-all' | 'double' | 'overlong' | 'upper' | 'capital'

/** after a name: mostly nothing, else what some server trims, drops or reads as the name's end */
const nameSuffix = fc.oneof(
  { arbitrary: fc.constant(''), weight: 24 },
  {
    arbitrary: fc.constantFrom('.', '%2e', '%2E', ';x=1', ';', '%3B', '%3b', '~', '%7e', '%20', '%23', '%3F'),
    weight: 8,
  },
  // refused: a raw space, tab, DEL or byte beyond ASCII, an encoded control character
  { arbitrary: fc.constantFrom(' ', '%09', '%00', '\t', '\x7f', 'é', 'Ã©'), weight: 1 },
)

/** one of `names` with some of its letters spelled another way */
const spelled = (...names: string[]) =>
  fc
    .record({
      name: fc.constantFrom(...names),
      how: fc.constantFrom<Spelling>(
        'plain',
        'plain',
        'plain',
        'escape',
        'escape',
        'escape-all',
        'double',
        'overlong',
        'upper',
        'capital',
      ),
      at: fc.nat(),
      lower: fc.boolean(),
      suffix: nameSuffix,
    })
    .map(({ name, how, at, lower, suffix }) => {
      const i = at % name.length
      const code = name.charCodeAt(i)
      const one = (letter: string) => name.slice(0, i) + letter + name.slice(i + 1)
      const written = {
        plain: name,
        escape: one(hex(code, lower)),
        'escape-all': [...name].map((c) => hex(c.charCodeAt(0), lower)).join(''),
        double: one(`%25${hex(code, lower).slice(1)}`),
        overlong: one(overlong(code, lower)),
        upper: name.toUpperCase(),
        capital: name[0]!.toUpperCase() + name.slice(1),
      }[how]
      return written + suffix
    })
const spelledName = spelled('admin', 'internal', 'public', 'a')

/** ".", "..", and the spellings some decoder reads as one */
const dotSegment = fc.oneof(
  {
    arbitrary: fc.constantFrom(
      '.',
      '..',
      '..',
      '%2e',
      '%2E',
      '%2e%2e',
      '%2E%2E',
      '.%2e',
      '%2e.',
      '.%2E',
      '%252e',
      '%252e%252e',
      '%c0%ae',
      '%c0%ae%c0%ae',
      '%C0%AE.',
      '..;',
      '..;x=1',
      '.;x',
      '...',
      '..%20',
      '..%3B',
    ),
    weight: 24,
  },
  // refused: an encoded NUL, a raw space, a backslash
  { arbitrary: fc.constantFrom('..%00', '.. ', '..\\'), weight: 1 },
)

const segment = fc.oneof(
  { arbitrary: spelledName, weight: 10 },
  { arbitrary: dotSegment, weight: 5 },
  { arbitrary: fc.constant(''), weight: 2 },
  { arbitrary: fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,=:@-]{1,4}$/), weight: 2 },
  // longer than nginx's 8 KiB header buffers (414), and than the proxy's
  { arbitrary: fc.constantFrom(1000, 9000, 17000).map((n) => 'l'.repeat(n)), weight: 1 },
)

const separator = fc.oneof(
  { arbitrary: fc.constant('/'), weight: 40 },
  {
    arbitrary: fc.constantFrom('//', '///', '/./', '/../', '/%2e/', '/%2E%2e/', '/.%2e/', '%252f', '%252F'),
    weight: 9,
  },
  // refused: an escaped slash or backslash, a backslash
  { arbitrary: fc.constantFrom('\\', '%2f', '%2F', '%5c', '%5C'), weight: 1 },
)

const tail = fc.oneof(
  { arbitrary: fc.constant(''), weight: 6 },
  {
    arbitrary: fc.constantFrom(
      '/',
      '?',
      '?q=/admin/../x',
      '?/../admin',
      '?a#b',
      '%3F/admin',
      '%23/admin',
      '?x=%2e%2e',
    ),
    weight: 4,
  },
  // refused: a fragment
  { arbitrary: fc.constantFrom('#', '#/admin'), weight: 1 },
)

interface Target {
  /** the request target as sent: origin-form, or absolute-form with the authority HOST */
  target: string
  /** what precedes the first "?": the path the proxy normalizes */
  path: string
  /** from the first "?" on, as sent ('' for none) */
  query: string
}

const toTarget = (target: string): Target => {
  const origin = target.startsWith('/') ? target : target.slice(`http://${HOST}`.length)
  const q = origin.indexOf('?')
  return q === -1
    ? { target, path: origin, query: '' }
    : { target, path: origin.slice(0, q), query: origin.slice(q) }
}

/** a protected or unprotected name, the aim of an attack */
const aim = fc.tuple(separator, spelled('admin', 'admin', 'internal', 'public'))
const steps = (arbitrary: fc.Arbitrary<string>, maxLength: number) =>
  fc.array(fc.tuple(separator, arbitrary), { maxLength })

// Shaped as an attack: some segments, about as many dot segments to climb back out of them (one fewer, as
// many or one more), the name aimed at, more segments
const targets: fc.Arbitrary<Target> = fc
  .record({
    lead: steps(segment, 3),
    dots: fc.array(fc.tuple(separator, dotSegment), { minLength: 4, maxLength: 4 }),
    climbBy: fc.integer({ min: -1, max: 1 }),
    aim,
    rest: steps(segment, 2),
    tail,
    absolute: fc.nat(9),
  })
  .map(({ lead, dots, climbBy, aim, rest, tail, absolute }) => {
    const climb = dots.slice(0, Math.max(0, lead.length + climbBy))
    // the first separator is "/" as sent: an origin-form target starts with it
    const [first, ...others] = [...lead, ...climb, aim, ...rest]
    const path = `/${first![1]}${others.map(([sep, s]) => sep + s).join('')}`
    return toTarget((absolute === 0 ? `http://${HOST}` : '') + path + tail)
  })

// ---- the clients ------------------------------------------------------------------------------------------

interface Answer {
  /** the status code, or how the request ended without one */
  status: number | 'reset' | 'unsendable' | 'closed'
  /** when a location of nginx answered: its marker, and what nginx made of the target */
  served?: { location: string; uri: string; requestUri: string }
  /** nginx answered without a location: it refused what the proxy forwarded */
  byNginx: boolean
}

/** what a response's text (its head and body, or its body) says of who answered */
const answered = (text: string): Pick<Answer, 'served' | 'byNginx'> => {
  const m = SERVED.exec(text)
  if (m === null) return { byNginx: NGINX_ERROR_PAGE.test(text) }
  return { served: { location: m[1]!, uri: m[2]!, requestUri: m[3]! }, byNginx: false }
}

/** HTTP/1.1: the target verbatim on a raw socket, raw bytes as latin1 */
async function h1Send(port: number, target: Target, id: string): Promise<Answer> {
  const text = await rawExchange(
    port,
    Buffer.from(
      `GET ${target.target} HTTP/1.1\r\nHost: ${HOST}\r\nx-request-id: ${id}\r\nConnection: close\r\n\r\n`,
      'latin1',
    ),
  )
  const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]
  return { status: status === undefined ? 'closed' : Number(status), ...answered(text) }
}

/** h2c with prior knowledge: the target as :path, its characters sent as latin1 bytes */
async function h2Send(url: string, target: Target, id: string): Promise<Answer> {
  const session = http2Connect(url)
  session.on('error', () => {})
  try {
    let stream: ReturnType<typeof session.request>
    try {
      stream = session.request(
        { ':method': 'GET', ':path': target.target, ':authority': HOST, 'x-request-id': id },
        { endStream: true },
      )
    } catch {
      return { status: 'unsendable', byNginx: false }
    }
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    const ended = new Promise<void>((resolve) => stream.on('close', resolve))
    let status: Answer['status'] = 'reset'
    stream.on('response', (headers) => {
      status = Number(headers[':status'])
    })
    stream.on('error', () => {})
    await ended
    return { status, ...answered(Buffer.concat(chunks).toString('latin1')) }
  } finally {
    session.destroy()
  }
}

// ---- the verdict ------------------------------------------------------------------------------------------

/** what this test reads of the proxy's audit events */
interface AuditEvent {
  request_id: string
  /** the normalized path rules and policy matched */
  path: string
}

/** limits.maxHeaderBytes, the default: a request head longer than this is refused with 431 */
const MAX_HEADER_BYTES = 16 * 1024

/** the verdicts of a request that reached a protected location of nginx */
const TRUST_BUG = /^(nginx served its protected|the policy saw the protected)/

/** one request as sent: its target, its client, and what the proxy speaks to nginx */
interface Sent {
  target: Target
  client: 'h1' | 'h2'
  upstream: Upstream
}

/** what is wrong with one answer, given the proxy's audit event for it; undefined when nothing is */
function verdict(
  { target, client, upstream }: Sent,
  answer: Answer,
  event: AuditEvent | undefined,
): string | undefined {
  const { served } = answer
  if (served !== undefined) {
    if (PROTECTED_LOCATIONS.has(served.location))
      return `nginx served its protected location ${served.location} (proxy matched ${event?.path})`
    if (target.target.length > MAX_HEADER_BYTES) return 'served, though over the header limit'
    if (event === undefined) return 'served without an audit event'
    if (isProtected(event.path)) return `the policy saw the protected ${event.path} and let it through`
    const forwarded = served.requestUri.slice(0, served.requestUri.length - target.query.length)
    if (served.requestUri !== event.path + target.query)
      return `nginx received ${served.requestUri}, not the matched ${event.path} with the query as sent`
    if (normalizePath(forwarded) !== forwarded) return `the forwarded ${forwarded} is not normal`
    if (served.uri !== nginxDecoded(event.path))
      return `nginx's $uri ${served.uri} is not the matched ${event.path} as nginx decodes it`
    return undefined
  }
  const normalized = normalizePath(target.path)
  // nghttp2 resets a :path that is not origin-form or holds a byte RFC 9113 §8.3.1 refuses
  const resetByNghttp2 =
    answer.status === 'reset' &&
    client === 'h2' &&
    (normalized === undefined || !target.target.startsWith('/'))
  // the proxy's 400 for a target it cannot normalize (or a byte HTTP/1.1's parser refuses)
  const refusedTarget = answer.status === 400 && !answer.byNginx && normalized === undefined
  // a head over the limit is refused by the proxy's listener, over HTTP/1.1 and HTTP/2 alike
  if (target.target.length > MAX_HEADER_BYTES)
    return answer.status === 431 || resetByNghttp2 || refusedTarget
      ? undefined
      : `over the header limit, answered ${answer.status}`
  // refused by nginx for its length (DOCUMENTED_DIFFERENCES): over HTTP/1.1 a 414, over HTTP/2 a reset the
  // proxy answers 502, as any upstream failure
  const tooLongForNginx = (event?.path.length ?? 0) > NGINX_REQUEST_LINE
  switch (answer.status) {
    case 403:
      if (event === undefined) return 'denied without an audit event'
      if (!isProtected(event.path)) return `denied on ${event.path}, which no rule protects`
      return undefined
    case 400:
      if (refusedTarget) return undefined
      if (!answer.byNginx) return `refused, though the proxy normalizes it to ${normalized}`
      break
    case 'reset':
      if (resetByNghttp2) return undefined
      break
    case 414:
      if (answer.byNginx && tooLongForNginx) return undefined
      break
    case 502:
      if (upstream === 'h2c' && tooLongForNginx) return undefined
      break
  }
  return `answered ${answer.status}${answer.byNginx ? ' by nginx' : ''}`
}

function tally(answers: Answer[]): string {
  const counts = new Map<string, number>()
  for (const a of answers) {
    const key = a.served ? `served ${a.served.location}` : a.byNginx ? `nginx ${a.status}` : String(a.status)
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  return [...counts].map(([k, n]) => `${n} ${k}`).join(', ')
}

// ---- the tests --------------------------------------------------------------------------------------------

t.test('the grammar reaches both sides of the policy and of the refusal', async (t) => {
  const normalized = (target: Target) => normalizePath(target.path)
  checkBothSides(
    t,
    targets,
    (target) => {
      const n = normalized(target)
      return n !== undefined && isProtected(n)
    },
    [150, 1200],
    'targets the proxy normalizes to a protected path',
  )
  checkBothSides(
    t,
    targets,
    (target) => normalized(target) === undefined,
    [300, 1500],
    'targets refused (400)',
  )
  checkBothSides(
    t,
    targets,
    (target) => target.path.includes('..') || /%2e/i.test(target.path),
    [300, 1900],
    'targets with a dot segment spelling',
  )
})

t.test('normalization is idempotent', async (t) => {
  checkProperty(
    t,
    'normalizing a normalized path gives itself',
    fc.property(targets, (target) => {
      const once = normalizePath(target.path)
      return once === undefined || normalizePath(once) === once
    }),
    2000,
  )
})

t.test('dot segments resolve as the WHATWG URL parser resolves them', async (t) => {
  // plain segments and the dot spellings WHATWG reads as dots ("." and "%2e" in either case), single "/":
  // where WHATWG keeps what the proxy merges (empty segments, ";" parameters, escaped letters), no comparison
  const plainOrDot = fc.array(
    fc.oneof(
      fc.constantFrom('admin', 'public', 'a'),
      fc.constantFrom('.', '..', '%2e', '%2E', '.%2e', '%2e.', '%2e%2e', '%2E%2e'),
    ),
    { minLength: 1, maxLength: 8 },
  )
  checkProperty(
    t,
    'the proxy and new URL() resolve dot segments alike',
    fc.property(plainOrDot, fc.boolean(), (segments, trailingSlash) => {
      const path = `/${segments.join('/')}${trailingSlash ? '/' : ''}`
      return normalizePath(path) === new URL(path, `http://${HOST}`).pathname
    }),
    2000,
  )
})

/** what the proxy sends nginx: HTTP/1.1 (`http://`), or HTTP/2 with prior knowledge (`h2c://`, nginx's `listen … http2`) */
type Upstream = 'http' | 'h2c'

for (const upstream of ['http', 'h2c'] as Upstream[]) {
  t.test(
    `no encoding trick makes nginx serve a protected location the policy did not see (${upstream} upstream)`,
    { skip: skipWithoutNginx },
    async (t) => {
      const nginx = await startNginx(t, await scratchDir('nginx'), (port) =>
        NGINX_SERVER(upstream === 'h2c' ? `${port} http2` : `${port}`),
      )
      const sidecar = await startTestSidecar(t, {
        upstream: `${upstream}://127.0.0.1:${nginx.port}`,
        policy: POLICY,
        audit: { output: 'off', ringSize: 2 * TARGETS + 100 },
      })
      const port = sidecar.proxyAddress.port
      t.comment(`documented differences: ${DOCUMENTED_DIFFERENCES.join('; ')}`)

      // hand-checked controls, so that a proxy that forwards nothing, or denies nothing, cannot pass
      const control = await h1Send(port, toTarget('/public/x?q=1'), 'control')
      t.match(
        control.served,
        { location: 'default', uri: '/public/x', requestUri: '/public/x?q=1' },
        'control: served',
      )
      t.equal((await h1Send(port, toTarget('/admin/x'), 'control-denied')).status, 403, 'control: denied')

      const started = Date.now()
      const sample = fc.sample(targets, { numRuns: TARGETS, seed: PROPERTY_SEED })
      const sent = sample.flatMap((target, i) => [
        { target, client: 'h1' as const, upstream, id: `pc-h1-${i}` },
        { target, client: 'h2' as const, upstream, id: `pc-h2-${i}` },
      ])
      const answers = await mapLimit(sent, CONCURRENCY, ({ target, client, id }) =>
        client === 'h1' ? h1Send(port, target, id) : h2Send(sidecar.proxyUrl, target, id),
      )
      // every request the proxy decided has its audit event: wait for those of the forwarded and the denied
      const awaited = sent.filter(
        (_, i) => answers[i]!.served !== undefined || answers[i]!.byNginx || answers[i]!.status === 403,
      )
      const events = await eventually(
        async () => {
          const res = await fetch(`${sidecar.adminUrl}/audit?limit=${2 * TARGETS + 100}`)
          const byId = new Map(
            ((await res.json()) as { events: AuditEvent[] }).events.map((e) => [e.request_id, e]),
          )
          return awaited.every(({ id }) => byId.has(id)) && byId
        },
        { what: `the audit events of ${awaited.length} requests` },
      )

      const disagreements: { target: string; client: string; status: Answer['status']; what: string }[] = []
      for (const [i, { target, client, id }] of sent.entries()) {
        const what = verdict(sent[i]!, answers[i]!, events.get(id))
        if (what !== undefined)
          disagreements.push({
            target: target.target.slice(0, 200),
            client,
            status: answers[i]!.status,
            what,
          })
      }
      // the trust bugs apart, so that other disagreements cannot crowd them out of the report
      t.same(
        disagreements.filter((d) => TRUST_BUG.test(d.what)).slice(0, 5),
        [],
        'nginx served no protected location to a request the policy let through',
      )
      t.same(disagreements.slice(0, 5), [], `no disagreement (of ${disagreements.length})`)
      t.ok(
        answers.some((a) => a.served !== undefined) && answers.some((a) => a.status === 403),
        'some requests were served and some denied',
      )
      t.comment(
        `${sent.length} requests (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms; HTTP/1.1: ${tally(
          answers.filter((_, i) => sent[i]!.client === 'h1'),
        )}; h2c: ${tally(answers.filter((_, i) => sent[i]!.client === 'h2'))}`,
      )
    },
  )
}
