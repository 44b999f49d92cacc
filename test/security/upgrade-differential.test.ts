// Asking for an upgrade must not change who a request is or what the policy says about it. Generated requests
// (credentials of every kind, paths a policy in enforce mode lets some identities reach and not others, with
// encoding tricks) are sent through the built proxy twice, each on a fresh connection: (a) with an upgrade
// (`Upgrade` of any protocol, in any case, in a list or two lines; `Connection` with `upgrade` among other
// tokens, in two lines or missing; a websocket handshake valid or not; a body; a second request pipelined right
// behind the header block) or as a CONNECT, and (b) the same request without any of it. For each pair the
// audit lines must name the same identity and decision, and the statuses agree but for the documented
// differences (DELIBERATE); a request (b) shows denied is denied as (a) too and nothing of (a) reaches the
// upstream; no tunnel byte and no pipelined request reaches it unless (a) was a websocket handshake the policy
// let through and the upstream accepted; and a pipelined request that does reach it was parsed and decided as
// its own request (its own audit line). The upstream is a real websocket server (it accepts only a valid
// handshake) that records every request head, every body and every byte of every tunnel.
//
// HTTP/2 has CONNECT streams: a CONNECT (`:authority` only) and an extended CONNECT (RFC 8441 `:protocol`,
// which the proxy does not offer: no SETTINGS_ENABLE_CONNECT_PROTOCOL) are written frame by frame
// (h2-frames.ts) and compared with the same request as a GET. Last, a reload that tightens the policy: the
// next upgrade is denied, on a connection opened before it too, while a tunnel admitted before it is kept.

import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { connect as tcpConnect } from 'node:net'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { pemCertificates } from '../../src/identity/certificate.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE, responseStatus } from '../helpers/h2-frames.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { listenUntilTeardown, rawClient } from '../helpers/net.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { checkBothSides, PROPERTY_SEED } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** generated pairs: each sent as (a) and (b) */
const REQUESTS = 120
const ISSUER = 'https://idp.example'
const AUTHORITY = 'svc.example'
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
/** a client, and a front proxy trusted for Envoy's XFCC */
const PEERS = { direct: '127.0.0.1', envoy: '127.0.0.2' } as const
type Peer = keyof typeof PEERS

/**
 * The documented differences between (a) and (b), each with its reason; any other difference in status is a
 * disagreement. Attribution (identity, kind, source, verified, team, decision, failures) never differs.
 */
const DELIBERATE = {
  switched:
    'a websocket handshake the policy lets through and the upstream accepts is answered 101, (b) 200: the tunnel',
  notHandshake:
    'a websocket offer that is no handshake (not a GET, no Sec-WebSocket-Key, a body) the policy lets through is refused 400 ' +
    '(SECURITY.md class 3): no websocket server would take it, and nothing else is switched to',
  upstreamRefused:
    "a websocket handshake the upstream refuses (a key that is no 16-byte nonce, a version other than 13) gets the upstream's answer",
  bodyWithOtherUpgrade:
    'a request offering another protocol than websocket with a body the policy lets through is refused 400: its body ' +
    'cannot be read once the connection has left the HTTP parser (SECURITY.md class 3)',
  connect:
    'CONNECT the policy lets through is answered 501 over either protocol: a reverse proxy opens no tunnel to a host ' +
    'the client names (SECURITY.md class 3). Its authority-form target names no path, so it is decided on none: ' +
    'its counterpart (b) is a GET of `/`, which no rule of the policy names either, so the two are decided alike',
  extendedConnect:
    'an HTTP/2 extended CONNECT (`:protocol`) is malformed where the server did not offer it (RFC 8441 §3): the ' +
    'stream is reset by the HTTP/2 layer before the proxy reads it, and never recorded',
  keptAfterReload:
    'a websocket tunnel admitted before a reload that tightens the policy is kept until it ends (docs/reference.md, ' +
    'reloads: an exchange already admitted keeps its attribution and decision); the next upgrade is decided anew, ' +
    'on a keep-alive connection opened before the reload too',
} as const
type Deliberate = keyof typeof DELIBERATE

// ---- the credentials, paths and upgrade shapes

interface Fixtures {
  tokens: Record<'valid' | 'admin' | 'expired' | 'forged', string>
  xfcc: string
}

/** a credential, as the field lines a client sends, and the peer it comes from */
const CREDENTIALS: readonly { what: string; peer: Peer; lines: (fx: Fixtures) => [string, string][] }[] = [
  { what: 'nothing', peer: 'direct', lines: () => [] },
  { what: 'a valid token', peer: 'direct', lines: (fx) => [['Authorization', `Bearer ${fx.tokens.valid}`]] },
  {
    what: 'a valid platform token',
    peer: 'direct',
    lines: (fx) => [['authorization', `bearer ${fx.tokens.admin}`]],
  },
  {
    what: 'an expired token',
    peer: 'direct',
    lines: (fx) => [['Authorization', `Bearer ${fx.tokens.expired}`]],
  },
  {
    what: 'a forged token',
    peer: 'direct',
    lines: (fx) => [['Authorization', `Bearer ${fx.tokens.forged}`]],
  },
  { what: 'the deploy key', peer: 'direct', lines: () => [['X-Api-Key', 'key-of-deploy']] },
  { what: 'an unknown key', peer: 'direct', lines: () => [['x-api-key', 'key-of-nobody']] },
  {
    what: "Googlebot's user agent",
    peer: 'direct',
    lines: () => [['User-Agent', 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)']],
  },
  { what: 'curl', peer: 'direct', lines: () => [['User-Agent', 'curl/8.5.0']] },
  {
    what: 'XFCC from the trusted Envoy',
    peer: 'envoy',
    lines: (fx) => [['X-Forwarded-Client-Cert', fx.xfcc]],
  },
  { what: 'XFCC from a client', peer: 'direct', lines: (fx) => [['x-forwarded-client-cert', fx.xfcc]] },
  {
    what: 'a forged identity header',
    peer: 'direct',
    lines: () => [
      ['X-NHI-Identity', 'admin'],
      ['x-nhi-verified', 'true'],
    ],
  },
]

/** allowed to some and denied to others (POLICY), with the encodings a path checker may read otherwise */
const PATHS = [
  '/',
  '/ws/chat',
  '/ws/%63hat?room=1',
  '/WS/chat',
  '/api/orders',
  '/admin/ws',
  '/%61dmin/ws',
  '/ADMIN/ws',
  '/ws/../admin/ws',
  '/ws/%2e%2e/admin/ws',
  '//admin/ws',
  '/admin%2fws',
  '/ws;/../admin/ws',
  '/ws/chat?next=/admin/ws',
] as const

/** `Upgrade` as sent: one value, two lines, or none */
const UPGRADES: readonly (readonly string[])[] = [
  ['websocket'],
  ['WebSocket'],
  ['WEBSOCKET'],
  ['websocket, h2c'],
  ['h2c, websocket'],
  ['h2c'],
  ['foo'],
  ['HTTP/2.0'],
  ['websocket/13'],
  ['h2c', 'websocket'],
  [],
]
/** `Connection` as sent: one value, two lines, or none */
const CONNECTIONS: readonly (readonly string[])[] = [
  ['Upgrade'],
  ['upgrade'],
  ['UPGRADE'],
  ['keep-alive, Upgrade'],
  ['Upgrade, HTTP2-Settings'],
  ['keep-alive', 'upgrade'],
  ['keep-alive'],
  ['close, upgrade'],
  [],
]
/** field names as written, in lower or upper case (field names are case-insensitive, RFC 9110 §5.1) */
const NAME_CASES = ['as written', 'lower', 'upper'] as const
const KEYS = { valid: 'dGhlIHNhbXBsZSBub25jZQ==', short: 'c2hvcnQ=', empty: '', missing: undefined } as const
const VERSIONS = ['13', '8', undefined] as const

/** the request pipelined right behind (a)'s header block (and body), with a forged identity */
const SMUGGLED = {
  denied: '/admin/secret',
  allowed: '/smuggled',
} as const

interface Spec {
  credential: number
  path: (typeof PATHS)[number]
  method: 'GET' | 'POST' | 'DELETE' | 'CONNECT'
  upgrade: readonly string[]
  connection: readonly string[]
  key: keyof typeof KEYS
  version: (typeof VERSIONS)[number]
  http2Settings: boolean
  /** how the names of the upgrade's fields are written */
  names: (typeof NAME_CASES)[number]
  body: 'none' | 'length' | 'chunked'
  smuggle?: keyof typeof SMUGGLED
}

const specArb: fc.Arbitrary<Spec> = fc.record(
  {
    credential: fc.nat(CREDENTIALS.length - 1),
    path: fc.constantFrom(...PATHS),
    method: fc.oneof(
      { weight: 8, arbitrary: fc.constant('GET' as const) },
      { weight: 2, arbitrary: fc.constantFrom('POST' as const, 'DELETE' as const) },
      { weight: 1, arbitrary: fc.constant('CONNECT' as const) },
    ),
    upgrade: fc.oneof(
      { weight: 3, arbitrary: fc.constant(UPGRADES[0]!) },
      { weight: 7, arbitrary: fc.constantFrom(...UPGRADES) },
    ),
    connection: fc.oneof(
      { weight: 3, arbitrary: fc.constant(CONNECTIONS[0]!) },
      { weight: 7, arbitrary: fc.constantFrom(...CONNECTIONS) },
    ),
    key: fc.oneof(
      { weight: 3, arbitrary: fc.constant('valid' as const) },
      { weight: 1, arbitrary: fc.constantFrom('short' as const, 'empty' as const, 'missing' as const) },
    ),
    version: fc.oneof(
      { weight: 3, arbitrary: fc.constant('13' as const) },
      { weight: 1, arbitrary: fc.constantFrom(...VERSIONS) },
    ),
    http2Settings: fc.boolean(),
    names: fc.constantFrom(...NAME_CASES),
    body: fc.oneof(
      { weight: 4, arbitrary: fc.constant('none' as const) },
      { weight: 1, arbitrary: fc.constantFrom('length' as const, 'chunked' as const) },
    ),
    smuggle: fc.constantFrom('denied' as const, 'allowed' as const),
  },
  {
    requiredKeys: [
      'credential',
      'path',
      'method',
      'upgrade',
      'connection',
      'key',
      'version',
      'http2Settings',
      'names',
      'body',
    ],
  },
)

const BODY = 'hello'

/** the shape (a) is read as by the rules of SECURITY.md class 3 */
function shapeOf(spec: Spec) {
  const tokens = (lines: readonly string[]) =>
    lines.flatMap((l) => l.split(',')).map((token) => token.trim().toLowerCase())
  // HTTP/1.1's parser switches only when Connection names `upgrade` and Upgrade is present
  const asksUpgrade =
    spec.method !== 'CONNECT' && spec.upgrade.length > 0 && tokens(spec.connection).includes('upgrade')
  const websocket = asksUpgrade && tokens(spec.upgrade).includes('websocket')
  const handshake =
    websocket &&
    spec.method === 'GET' &&
    spec.key !== 'missing' &&
    spec.key !== 'empty' &&
    spec.body === 'none'
  return { asksUpgrade, websocket, handshake, upstreamAccepts: spec.key === 'valid' && spec.version === '13' }
}

/**
 * (a) of pair `id`: the request (`ID-a`) with its upgrade (or as a CONNECT), and what is pipelined behind it
 * (`ID-smuggled`)
 */
function upgradeRequest(spec: Spec, fx: Fixtures, id: string): string {
  const lines: [string, string][] = [
    ['Host', spec.method === 'CONNECT' ? `${AUTHORITY}:443` : AUTHORITY],
    ['x-request-id', `${id}-a`],
    ...CREDENTIALS[spec.credential]!.lines(fx),
  ]
  if (spec.method !== 'CONNECT') {
    const name = (n: string) =>
      spec.names === 'lower' ? n.toLowerCase() : spec.names === 'upper' ? n.toUpperCase() : n
    for (const value of spec.connection) lines.push([name('Connection'), value])
    for (const value of spec.upgrade) lines.push([name('Upgrade'), value])
    if (spec.http2Settings) lines.push([name('HTTP2-Settings'), 'AAMAAABkAAQCAAAAAAIAAAAA'])
    if (KEYS[spec.key] !== undefined) lines.push([name('Sec-WebSocket-Key'), KEYS[spec.key]!])
    if (spec.version !== undefined) lines.push([name('Sec-WebSocket-Version'), spec.version])
  }
  const target = spec.method === 'CONNECT' ? `${AUTHORITY}:443` : spec.path
  return headAndBody(spec, `${spec.method} ${target} HTTP/1.1`, lines) + smuggled(spec, id)
}

/** (b): the same request without anything an upgrade or tunnel is made of; a CONNECT's counterpart is a GET */
function plainRequest(spec: Spec, fx: Fixtures, id: string): string {
  const lines: [string, string][] = [
    ['Host', AUTHORITY],
    ['x-request-id', id],
    ...CREDENTIALS[spec.credential]!.lines(fx),
    ['Connection', 'close'],
  ]
  const method = spec.method === 'CONNECT' ? 'GET' : spec.method
  const target = spec.method === 'CONNECT' ? '/' : spec.path
  return headAndBody(spec, `${method} ${target} HTTP/1.1`, lines)
}

function headAndBody(spec: Spec, requestLine: string, lines: [string, string][]): string {
  const withBody = spec.method !== 'CONNECT' && spec.body !== 'none'
  if (withBody)
    lines.push(
      spec.body === 'length' ? ['Content-Length', String(BODY.length)] : ['Transfer-Encoding', 'chunked'],
    )
  const head = `${requestLine}\r\n${lines.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`
  if (!withBody) return head
  return head + (spec.body === 'length' ? BODY : `${BODY.length.toString(16)}\r\n${BODY}\r\n0\r\n\r\n`)
}

function smuggled(spec: Spec, id: string): string {
  if (spec.smuggle === undefined) return ''
  return (
    `GET ${SMUGGLED[spec.smuggle]} HTTP/1.1\r\nHost: ${AUTHORITY}\r\nx-request-id: ${id}-smuggled\r\n` +
    'X-NHI-Identity: admin\r\nx-nhi-team: platform\r\n\r\n'
  )
}

// ---- the upstream: a real websocket server that records everything

interface Recorded {
  method: string
  url: string
  headers: IncomingHttpHeaders
  body: string
}

async function startRecordingUpstream(t: Test) {
  const requests: Recorded[] = []
  const upgrades: Recorded[] = []
  /** the bytes of each tunnel, by the request id of its handshake */
  const tunnels = new Map<string, string>()
  /** what the upstream's parser could not read, raw */
  const unreadable: string[] = []
  const server = createServer((req, res) => {
    let body = ''
    req.setEncoding('latin1')
    req.on('data', (c: string) => {
      body += c
    })
    req.on('end', () => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      res.end(`plain ${req.url}`)
    })
  })
  server.on('upgrade', (req, socket, head) => {
    upgrades.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: '' })
    socket.on('error', () => {})
    const key = req.headers['sec-websocket-key']
    // RFC 6455 §4.2.1: a GET, a 16-byte nonce, version 13
    const valid =
      req.method === 'GET' &&
      String(req.headers.upgrade).toLowerCase() === 'websocket' &&
      req.headers['sec-websocket-version'] === '13' &&
      typeof key === 'string' &&
      Buffer.from(key, 'base64').length === 16
    if (!valid) {
      socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
      return
    }
    const id = String(req.headers['x-request-id'])
    tunnels.set(id, head.toString('latin1'))
    socket.on('data', (c: Buffer) => tunnels.set(id, tunnels.get(id) + c.toString('latin1')))
    // as websocket servers do: a client that ends its side ends the connection (the tunnel's audit line is
    // written when it closes)
    socket.on('end', () => socket.end())
    const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n' +
        `sec-websocket-accept: ${accept}\r\n\r\n`,
    )
  })
  server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket) => {
    unreadable.push(err.rawPacket?.toString('latin1') ?? err.message)
    socket.destroy()
  })
  const port = await listenUntilTeardown(t, server)
  /** everything of request `id` the upstream got: a request, a handshake, a tunnel's bytes, a parse failure */
  const sawAnything = (id: string): string[] => [
    ...requests.filter((r) => r.headers['x-request-id'] === id).map((r) => `request ${r.url}`),
    ...requests.filter((r) => r.body.includes(id)).map((r) => `the body of ${r.headers['x-request-id']}`),
    ...upgrades.filter((u) => u.headers['x-request-id'] === id).map((u) => `handshake ${u.url}`),
    ...[...tunnels].filter(([, bytes]) => bytes.includes(id)).map(([of]) => `tunnel of ${of}`),
    ...unreadable.filter((raw) => raw.includes(id)).map(() => 'unreadable bytes'),
  ]
  return { url: `http://127.0.0.1:${port}`, requests, upgrades, tunnels, sawAnything }
}

// ---- the exchanges

interface Answer {
  /** the statuses the client read, in order */
  statuses: number[]
  raw: string
}

/** the complete responses at the start of `text` (the proxy's and these upstreams' answers have a length) */
function completeAnswers(text: string): number[] {
  const out: number[] = []
  let at = 0
  for (;;) {
    const end = text.indexOf('\r\n\r\n', at)
    if (end === -1) return out
    const head = text.slice(at, end)
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0)
    if (status === 101) return [...out, 101]
    const length = /\r\ncontent-length: *(\d+)/i.exec(head)
    if (length === null) return out
    const next = end + 4 + Number(length[1])
    if (next > text.length) return out
    out.push(status)
    at = next
  }
}

/**
 * Writes `bytes` on a new connection from `peer` and resolves once `expected` answers are complete, a 101 was
 * read (and, with `tunnelled`, once it holds: the bytes behind the handshake went through) or the connection
 * closed. The connection is closed then: a tunnel's audit line is written when it ends.
 */
async function exchange(
  port: number,
  peer: Peer,
  bytes: string,
  expected: number,
  tunnelled?: () => boolean,
): Promise<Answer> {
  const socket = tcpConnect({ host: '127.0.0.1', port, localAddress: PEERS[peer] })
  socket.on('error', () => {})
  let raw = ''
  socket.on('data', (c: Buffer) => {
    raw += c.toString('latin1')
  })
  let closed = false
  socket.on('close', () => {
    closed = true
  })
  await once(socket, 'connect')
  socket.write(bytes, 'latin1')
  try {
    await eventually(
      () => {
        const answers = completeAnswers(raw)
        if (answers.at(-1) === 101) return tunnelled === undefined || tunnelled()
        return closed || answers.length >= expected
      },
      { what: `the answers to ${JSON.stringify(bytes.slice(0, 200))}`, timeoutMs: 5000 },
    )
  } catch {
    // judged by what was read: a connection left open without an answer is a disagreement of its own
  } finally {
    socket.destroy()
  }
  return { statuses: completeAnswers(raw), raw }
}

async function auditLine(adminUrl: string, requestId: string): Promise<Record<string, unknown> | undefined> {
  const res = await fetch(`${adminUrl}/audit?request_id=${encodeURIComponent(requestId)}`)
  const { events } = (await res.json()) as { events: Record<string, unknown>[] }
  return events[0]
}

/** the audit fields that say who the request is and what the policy said */
const ATTRIBUTION = ['identity', 'kind', 'source', 'verified', 'team', 'failures', 'decision', 'policy_rule']
const attribution = (line: Record<string, unknown>) =>
  Object.fromEntries(ATTRIBUTION.map((field) => [field, line[field]]))

const DENIED = [401, 403]

/** the deliberate difference that lets (a) be answered `a` where (b) was answered `b`, if any */
function deliberate(spec: Spec, a: number, b: number): Deliberate | undefined {
  const shape = shapeOf(spec)
  if (DENIED.includes(b)) return undefined
  if (spec.method === 'CONNECT') return a === 501 ? 'connect' : undefined
  if (shape.handshake && shape.upstreamAccepts && b === 200 && a === 101) return 'switched'
  if (shape.handshake && !shape.upstreamAccepts && b === 200 && a === 400) return 'upstreamRefused'
  if (shape.websocket && !shape.handshake && a === 400) return 'notHandshake'
  if (shape.asksUpgrade && !shape.websocket && spec.body !== 'none' && a === 400)
    return 'bodyWithOtherUpgrade'
  return undefined
}

interface Running {
  port: number
  adminUrl: string
  fx: Fixtures
  upstream: Awaited<ReturnType<typeof startRecordingUpstream>>
}

/** what is wrong with pair `id` of `spec`: a line per disagreement or broken invariant */
async function judge(r: Running, spec: Spec, id: string, seen: Set<string | number>): Promise<string[]> {
  const out: string[] = []
  const peer = CREDENTIALS[spec.credential]!.peer
  const shape = shapeOf(spec)
  const b = await exchange(r.port, peer, plainRequest(spec, r.fx, `${id}-b`), 1)
  const tunnelled =
    spec.smuggle === undefined
      ? undefined
      : () => (r.upstream.tunnels.get(`${id}-a`) ?? '').includes(`${id}-smuggled`)
  const a = await exchange(r.port, peer, upgradeRequest(spec, r.fx, id), spec.smuggle ? 2 : 1, tunnelled)
  const [lineA, lineB] = await Promise.all(
    [`${id}-a`, `${id}-b`].map((requestId) =>
      eventually(() => auditLine(r.adminUrl, requestId), { what: `the audit line of ${requestId}` }).catch(
        () => undefined,
      ),
    ),
  )
  if (lineA === undefined || lineB === undefined) {
    const reached = r.upstream.sawAnything(`${id}-a`)
    return [
      `no audit line for ${lineA === undefined ? '(a)' : '(b)'}; (a) read ${JSON.stringify(a.raw.slice(0, 120))}, ` +
        `reached the upstream as ${reached.join(', ') || 'nothing'}`,
    ]
  }
  const statusB = b.statuses[0]
  const statusA = a.statuses[0]
  if (statusB === undefined || statusB !== lineB['status'])
    out.push(`(b) read ${statusB}, audited ${lineB['status']}`)
  if (statusA === undefined) out.push(`(a) got no answer: ${JSON.stringify(a.raw.slice(0, 200))}`)
  else if (statusA !== lineA['status']) out.push(`(a) read ${statusA}, audited ${lineA['status']}`)
  if (statusA !== undefined && statusB !== undefined && statusA !== statusB) {
    const why = deliberate(spec, statusA, statusB)
    if (why === undefined) out.push(`status ${statusA} vs ${statusB}`)
    else seen.add(why)
  }
  if (statusB !== undefined) seen.add(statusB)
  const [attrA, attrB] = [attribution(lineA), attribution(lineB)]
  if (JSON.stringify(attrA) !== JSON.stringify(attrB))
    out.push(`attribution ${JSON.stringify(attrA)} vs ${JSON.stringify(attrB)}`)
  const reachedA = r.upstream.sawAnything(`${id}-a`)
  if (statusB !== undefined && DENIED.includes(statusB) && reachedA.length > 0)
    out.push(`denied as (b), yet (a) reached the upstream: ${reachedA.join(', ')}`)
  // what the upstream was told of who the request is, on the upgrade's path and the plain one alike
  const atUpstream = (requestId: string) =>
    [...r.upstream.requests, ...r.upstream.upgrades].find((x) => x.headers['x-request-id'] === requestId)
  const [upstreamA, upstreamB] = [atUpstream(`${id}-a`), atUpstream(`${id}-b`)]
  const refusedUpgrade = statusA === 400 || statusA === 501
  if (upstreamB !== undefined && upstreamA === undefined && !refusedUpgrade)
    out.push(`(b) reached the upstream, (a) answered ${statusA} did not`)
  if (upstreamA !== undefined && upstreamB !== undefined) {
    const told = (x: Recorded) =>
      JSON.stringify(Object.entries(x.headers).filter(([name]) => name.startsWith('x-nhi-')))
    if (told(upstreamA) !== told(upstreamB))
      out.push(`the upstream was told ${told(upstreamA)} vs ${told(upstreamB)}`)
  }
  const switched = statusA === 101
  if (switched && !(shape.handshake && shape.upstreamAccepts && statusB === 200))
    out.push('switched, though (a) was no valid websocket handshake the policy let through')
  const tunnel = r.upstream.tunnels.get(`${id}-a`)
  if (tunnel !== undefined && !switched)
    out.push(`tunnel bytes reached the upstream without a switch: ${tunnel}`)
  if (spec.smuggle !== undefined) {
    const smuggledId = `${id}-smuggled`
    const reached = r.upstream.sawAnything(smuggledId)
    const asRequest = reached.filter((what) => what.startsWith('request '))
    const otherwise = reached.filter((what) => !asRequest.includes(what) && what !== `tunnel of ${id}-a`)
    if (otherwise.length > 0)
      out.push(`the pipelined request reached the upstream as ${otherwise.join(', ')}`)
    if (reached.includes(`tunnel of ${id}-a`)) seen.add('pipelined through a tunnel')
    if (asRequest.length > 0) {
      seen.add('pipelined parsed as its own')
      // parsed as a request of its own: it must have been decided as one, and recorded
      const own = await eventually(() => auditLine(r.adminUrl, smuggledId), {
        what: `the audit line of ${smuggledId}`,
      }).catch(() => undefined)
      if (own === undefined)
        out.push('the pipelined request reached the upstream with no audit line of its own')
      else if (own['decision'] !== 'allow' || own['identity'] === 'admin')
        out.push(`the pipelined request reached the upstream as ${own['identity']}, ${own['decision']}`)
    }
  }
  return out
}

// ---- the set-up

async function makeFixtures(t: Test) {
  const key = await createSigningKey('k1', 'ES256')
  const other = await createSigningKey('k1', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const mint = (claims: Record<string, unknown>, opts: { expiresIn?: number } = {}, signer = key) =>
    mintToken(signer, claims, { issuer: ISSUER, audience: 'orders', ...opts })
  const workload = { sub: 'system:serviceaccount:pay:api', team: 'pay' }
  const ca = await createCA('upgrade-differential-ca')
  const cert = await issueCert(ca, { subject: '/O=acme/CN=gateway' })
  const fx: Fixtures = {
    tokens: {
      valid: await mint(workload),
      admin: await mint({ sub: 'admin', team: 'platform' }),
      expired: await mint(workload, { expiresIn: -60 }),
      forged: await mint(workload, {}, other),
    },
    xfcc: `Hash=${sha256Hex(pemCertificates(cert.certPem)[0]!.raw)};Subject="CN=gateway,O=acme"`,
  }
  const config = {
    service: 'orders',
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
    apiKeys: { keys: [{ name: 'deploy', kind: 'job', sha256: sha256Hex('key-of-deploy') }] },
    forwardedClientCert: { trustedProxies: [{ cidr: `${PEERS.envoy}/32`, format: 'xfcc' }] },
    identities: [
      { name: 'edge/{cn}', team: 'platform', match: { source: 'xfcc', cert: { subject: 'CN={cn},O=acme' } } },
      { name: 'jwt:{team}', match: { jwt: { issuer: ISSUER, claims: { team: '{team}' } } } },
      { name: 'deployer', kind: 'job', team: 'platform', match: { apiKey: 'deploy' } },
    ],
    // who may reach what: the websocket routes by method, the admin routes for the platform team only
    policy: {
      mode: 'enforce',
      rules: [
        { route: '/admin/**', allow: [{ team: 'platform', verified: true }] },
        { route: '/ws/**', methods: ['GET'], allow: [{ verified: true }] },
        { route: '/ws/**', allow: [{ team: 'platform' }] },
        { route: '/api/**', allow: [{ verified: true }, { kind: 'bot' }] },
      ],
    },
  }
  return { fx, config }
}

t.test('the generator reaches the cases that matter', async (t) => {
  checkBothSides(
    t,
    specArb,
    (s) => shapeOf(s).handshake && shapeOf(s).upstreamAccepts,
    [300, 900],
    'valid handshakes',
  )
  checkBothSides(
    t,
    specArb,
    (s) => shapeOf(s).asksUpgrade && !shapeOf(s).websocket,
    [150, 900],
    'other upgrades',
  )
  checkBothSides(
    t,
    specArb,
    (s) => s.method !== 'CONNECT' && !shapeOf(s).asksUpgrade,
    [150, 900],
    'no switch asked',
  )
  checkBothSides(t, specArb, (s) => s.method === 'CONNECT', [60, 400], 'CONNECTs')
})

t.test('an upgrade or tunnel is attributed and decided as the same request without it', async (t) => {
  const began = Date.now()
  const { fx, config } = await makeFixtures(t)
  const upstream = await startRecordingUpstream(t)
  const sidecar = await startTestSidecar(t, { ...config, upstream: upstream.url })
  const running: Running = { port: sidecar.proxyAddress.port, adminUrl: sidecar.adminUrl, fx, upstream }
  const seen = new Set<string | number>()
  const specs = fc.sample(specArb, { numRuns: REQUESTS, seed: PROPERTY_SEED })
  const disagreements: string[] = []
  for (const [i, spec] of specs.entries()) {
    for (const line of await judge(running, spec, `ud-${i}`, seen))
      disagreements.push(`pair ${i} ${JSON.stringify(spec)}\n  ${line}`)
  }
  t.same(disagreements.slice(0, 40), [], `no disagreement (${disagreements.length} in ${specs.length} pairs)`)
  t.ok(seen.has(403) && seen.has(200), `requests allowed and denied as (b): ${[...seen].join(' ')}`)
  t.ok(seen.has('switched'), 'websocket tunnels opened')
  t.ok(
    seen.has('pipelined through a tunnel') && seen.has('pipelined parsed as its own'),
    'pipelined requests carried by a tunnel, and parsed as requests of their own',
  )
  t.comment(`${specs.length} pairs (seed ${PROPERTY_SEED}) in ${Date.now() - began} ms`)
})

// ---- HTTP/2: CONNECT streams

/** the stream (a) is sent as, with the credential's fields (HTTP/2 spelling: lower-case names) */
const H2_SHAPES = {
  connect: (authority: string) => [
    [':method', 'CONNECT'],
    [':authority', `${authority}:443`],
  ],
  extendedConnect: (authority: string) => [
    [':method', 'CONNECT'],
    [':protocol', 'websocket'],
    [':scheme', 'http'],
    [':path', '/ws/chat'],
    [':authority', authority],
    ['sec-websocket-version', '13'],
  ],
} as const
type H2Shape = keyof typeof H2_SHAPES

/**
 * Writes one stream on a new connection from `peer` (a CONNECT's stream left open, with bytes for the tunnel
 * behind its HEADERS) and resolves with its status, or `reset` when it was reset before any.
 */
async function h2Exchange(
  port: number,
  peer: Peer,
  fields: [string, string][],
  open: boolean,
  tunnelBytes: string,
): Promise<number | 'reset' | undefined> {
  const socket = tcpConnect({ host: '127.0.0.1', port, localAddress: PEERS[peer] })
  socket.on('error', () => {})
  let received = Buffer.alloc(0)
  socket.on('data', (c: Buffer) => {
    received = Buffer.concat([received, c])
  })
  await once(socket, 'connect')
  socket.write(
    Buffer.concat([
      PREFACE,
      frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
      frame(FRAME.HEADERS, FLAG.END_HEADERS | (open ? 0 : FLAG.END_STREAM), 1, headerBlock(fields)),
      ...(open ? [frame(FRAME.DATA, 0, 1, Buffer.from(tunnelBytes, 'latin1'))] : []),
    ]),
  )
  let answer: number | 'reset' | undefined
  try {
    await eventually(
      () => {
        for (let at = 0; at + 9 <= received.length; ) {
          const length = received.readUIntBE(at, 3)
          if (at + 9 + length > received.length) break
          const type = received[at + 3]
          const id = received.readUInt32BE(at + 5) & 0x7fffffff
          if (id === 1 && type === FRAME.HEADERS)
            answer = responseStatus(received.subarray(at + 9, at + 9 + length))
          if (id === 1 && type === FRAME.RST_STREAM && answer === undefined) answer = 'reset'
          if (type === FRAME.GOAWAY && answer === undefined) answer = 'reset'
          at += 9 + length
        }
        return answer !== undefined || socket.destroyed
      },
      { what: 'the answer to the stream' },
    )
  } finally {
    socket.destroy()
  }
  return answer
}

t.test('an HTTP/2 CONNECT stream is attributed and decided as the same request without it', async (t) => {
  const { fx, config } = await makeFixtures(t)
  const upstream = await startRecordingUpstream(t)
  const sidecar = await startTestSidecar(t, { ...config, upstream: upstream.url })
  const port = sidecar.proxyAddress.port
  const pairs = fc.sample(
    fc.record({
      credential: fc.nat(CREDENTIALS.length - 1),
      shape: fc.constantFrom<H2Shape>('connect', 'extendedConnect'),
    }),
    { numRuns: 24, seed: PROPERTY_SEED },
  )
  const disagreements: string[] = []
  const answers = new Set<string>()
  for (const [i, { credential, shape }] of pairs.entries()) {
    const id = `h2-${i}`
    const { peer } = CREDENTIALS[credential]!
    const credentials = CREDENTIALS[credential]!.lines(fx).map(
      ([n, v]) => [n.toLowerCase(), v] as [string, string],
    )
    const plainPath = shape === 'connect' ? '/' : '/ws/chat'
    const b = await h2Exchange(
      port,
      peer,
      [
        [':method', 'GET'],
        [':scheme', 'http'],
        [':path', plainPath],
        [':authority', AUTHORITY],
        ['x-request-id', `${id}-b`],
        ...credentials,
      ],
      false,
      '',
    )
    const a = await h2Exchange(
      port,
      peer,
      [...H2_SHAPES[shape](AUTHORITY), ['x-request-id', `${id}-a`], ...credentials] as [string, string][],
      true,
      smuggled({ smuggle: 'allowed' } as Spec, id),
    )
    const lineB = await eventually(() => auditLine(sidecar.adminUrl, `${id}-b`), {
      what: `the audit line of ${id}-b`,
    })
    const why = (line: string) =>
      disagreements.push(`stream ${i} ${shape} from ${CREDENTIALS[credential]!.what}: ${line}`)
    if (b !== lineB['status']) why(`(b) answered ${b}, audited ${lineB['status']}`)
    const reached = [...upstream.sawAnything(`${id}-a`), ...upstream.sawAnything(`${id}-smuggled`)]
    if (reached.length > 0) why(`(a) reached the upstream: ${reached.join(', ')}`)
    answers.add(`${shape} ${a} (b: ${b})`)
    if (shape === 'extendedConnect') {
      // DELIBERATE.extendedConnect: reset by the HTTP/2 layer, as no SETTINGS_ENABLE_CONNECT_PROTOCOL was offered
      if (a !== 'reset' && a !== 400) why(`extended CONNECT answered ${a}`)
      continue
    }
    const lineA = await eventually(() => auditLine(sidecar.adminUrl, `${id}-a`), {
      what: `the audit line of ${id}-a`,
    })
    if (a !== lineA['status']) why(`(a) answered ${a}, audited ${lineA['status']}`)
    // DELIBERATE.connect
    const expected = typeof b === 'number' && DENIED.includes(b) ? b : 501
    if (a !== expected) why(`status ${a} vs ${b}`)
    if (JSON.stringify(attribution(lineA)) !== JSON.stringify(attribution(lineB)))
      why(`attribution ${JSON.stringify(attribution(lineA))} vs ${JSON.stringify(attribution(lineB))}`)
  }
  t.same(disagreements, [], `no disagreement in ${pairs.length} streams`)
  t.ok(
    answers.has('connect 501 (b: 200)') && [...answers].some((a) => a.startsWith('extendedConnect reset')),
    `CONNECTs answered 501, extended CONNECTs reset: ${[...answers].join(', ')}`,
  )
})

t.test(
  'a reload that tightens the policy denies the next upgrade, on a connection opened before it too',
  async (t) => {
    // DELIBERATE.keptAfterReload
    const { fx, config } = await makeFixtures(t)
    const upstream = await startRecordingUpstream(t)
    const sidecar = await startTestSidecar(t, { ...config, upstream: upstream.url })
    const port = sidecar.proxyAddress.port
    const handshake = (id: string) =>
      `GET /ws/chat HTTP/1.1\r\nHost: ${AUTHORITY}\r\nx-request-id: ${id}\r\nAuthorization: Bearer ${fx.tokens.valid}\r\n` +
      `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEYS.valid}\r\n\r\n`
    const tunnel = await rawClient(port)
    tunnel.socket.write(handshake('reload-tunnel'))
    await eventually(() => completeAnswers(tunnel.text()).includes(101), { what: 'the tunnel' })
    const kept = await rawClient(port)
    kept.socket.write(
      `GET /ws/chat HTTP/1.1\r\nHost: ${AUTHORITY}\r\nAuthorization: Bearer ${fx.tokens.valid}\r\n\r\n`,
    )
    await eventually(() => completeAnswers(kept.text()).length === 1, {
      what: 'the answer before the reload',
    })
    const tightened = { mode: 'enforce', rules: [{ route: '/ws/**', allow: [{ team: 'platform' }] }] }
    t.ok(await sidecar.reload({ ...config, upstream: upstream.url, policy: tightened }), 'reloaded')
    kept.socket.write(handshake('reload-kept'))
    await eventually(() => kept.closed() || completeAnswers(kept.text()).length === 2, {
      what: 'the answer after the reload',
    })
    t.same(completeAnswers(kept.text()), [200, 403], 'on the connection opened before: denied')
    const fresh = await exchange(port, 'direct', handshake('reload-fresh'), 1)
    t.same(fresh.statuses, [403], 'on a new connection: denied')
    t.same(
      [...upstream.sawAnything('reload-kept'), ...upstream.sawAnything('reload-fresh')],
      [],
      'neither reached it',
    )
    tunnel.socket.write('after the reload')
    await eventually(() => upstream.tunnels.get('reload-tunnel')?.includes('after the reload'), {
      what: 'the bytes through the tunnel admitted before the reload',
    })
    t.pass('the tunnel admitted before the reload is kept, as documented')
    kept.socket.destroy()
    tunnel.socket.destroy()
  },
)
