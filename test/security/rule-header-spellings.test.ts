import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import {
  createServer as createH2cServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, hpackString, PREFACE, stream1Answer } from '../helpers/h2-frames.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { rawExchange } from '../helpers/net.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { listenTcp } from '../helpers/trailers.ts'

t.setTimeout(120_000)

/** what a CGI gateway makes of a header name */
const cgi = (name: string) => `HTTP_${name.toUpperCase().replace(/-/g, '_')}`

interface Received {
  /** [name, value] pairs as they arrived, names in the case they were sent */
  headers: [string, string][]
  trailers: [string, string][]
}

/** an upstream handler that keeps each completed request's raw header and trailer pairs, by its x-case */
function recorder() {
  const seen = new Map<string, Received>()
  const handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    req.resume()
    req.on('end', () => {
      const pairs = (raw: string[]) =>
        raw.flatMap((v, i, a): [string, string][] => (i % 2 ? [] : [[v, a[i + 1]!]]))
      const headers = pairs(req.rawHeaders)
      const label = headers.find(([n]) => n.toLowerCase() === 'x-case')?.[1]
      if (label !== undefined) seen.set(label, { headers, trailers: pairs(req.rawTrailers) })
      res.end('ok')
    })
  }
  return { handler, seen }
}

const h1 = recorder()
const h1Server = createServer(h1.handler)
const h2 = recorder()
const h2Server = createH2cServer(h2.handler)
t.teardown(() => {
  h1Server.closeAllConnections()
  h1Server.close()
  h2Server.close()
})
const h1Port = await listenTcp(h1Server)
const h2Port = await listenTcp(h2Server)

const ruleOn = (header: string, upstream: string) => ({
  service: 'tenants',
  upstream,
  identities: [{ name: 'tenant-{t}', kind: 'human', match: { header: { [header]: '{t}' } } }],
})

interface Side {
  name: string
  upstream: string
  sidecar: TestSidecar
  port: number
  seen: Map<string, Received>
}

async function side(name: string, upstream: string, seen: Map<string, Received>): Promise<Side> {
  const sidecar = await startTestSidecar(t, ruleOn('x-tenant', upstream))
  return { name, upstream, sidecar, port: sidecar.proxyAddress.port, seen }
}

const sides = [
  await side('towards an HTTP/1.1 upstream', `http://127.0.0.1:${h1Port}`, h1.seen),
  await side('towards an h2c upstream', `h2c://127.0.0.1:${h2Port}`, h2.seen),
]

const spoofed = async (s: Side) =>
  metricValue(await scrape(s.sidecar.adminUrl), 'nhi_credential_anomalies_total', { type: 'spoofed_header' })

/** whether the spoofed_header count comes to `n` (false when the wait runs out, so the test goes on) */
const spoofedComesTo = (s: Side, n: number) =>
  eventually(async () => (await spoofed(s)) === n, { what: `spoofed_header ${n}`, timeoutMs: 5_000 }).then(
    () => true,
    () => false,
  )

/** the request the upstream completed with `x-case: label`, once it has */
const completed = (s: Side, label: string) =>
  eventually(() => s.seen.get(label), { what: `${s.name}: the upstream to complete ${label}` })

/** what the upstream received under any name a CGI app reads as `header` */
const merged = (pairs: [string, string][], header: string) => pairs.filter(([n]) => cgi(n) === cgi(header))
const field = (pairs: [string, string][], name: string) => pairs.find(([n]) => n.toLowerCase() === name)?.[1]

/** one HTTP/1.1 request written as raw bytes: `fields` in the header section, `trailers` after a chunked body */
async function h1Raw(port: number, label: string, fields: [string, string][], trailers?: [string, string][]) {
  const lines = fields.map(([n, v]) => `${n}: ${v}\r\n`).join('')
  const text = trailers
    ? `POST /t HTTP/1.1\r\nHost: app.example\r\nx-case: ${label}\r\n${lines}Transfer-Encoding: chunked\r\n` +
      `Trailer: ${trailers.map(([n]) => n).join(', ')}\r\nConnection: close\r\n\r\n` +
      `5\r\nhello\r\n0\r\n${trailers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`
    : `GET /h HTTP/1.1\r\nHost: app.example\r\nx-case: ${label}\r\n${lines}Connection: close\r\n\r\n`
  return (await rawExchange(port, text)).split('\r\n')[0]
}

/** one request on stream 1 of a prior-knowledge h2c connection; resolves with the answer's :status */
async function h2cRaw(
  port: number,
  label: string,
  fields: [string, string][],
  trailers?: [string, string][],
) {
  // :method POST or GET, :scheme http (HPACK static 3 or 2, and 6), then :path and the literal fields
  const head = Buffer.concat([
    Buffer.from([trailers ? 0x83 : 0x82, 0x86, 0x04]),
    hpackString(trailers ? '/t' : '/h'),
    headerBlock([[':authority', 'app.example'], ['x-case', label], ...fields]),
  ])
  const frames = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
  if (trailers) {
    frames.push(
      frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, head),
      frame(FRAME.DATA, 0, 1, Buffer.from('hello')),
      frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, headerBlock(trailers)),
    )
  } else frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, head))
  return stream1Answer(port, frames, { what: `the answer to ${label}` })
}

const clients = [
  { name: 'HTTP/1.1', send: h1Raw, ok: 'HTTP/1.1 200 OK', variant: 'X_Tenant' },
  // HTTP/2 field names are lower-case on the wire (RFC 9113 §8.2.1)
  { name: 'h2c', send: h2cRaw, ok: 'status 200', variant: 'x_tenant' },
]

t.test('a rule-named header under another spelling never reaches the upstream', async (t) => {
  for (const s of sides) {
    for (const c of clients) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`

      // control: the exact name alone is the rule's and the upstream's
      let before = await spoofed(s)
      let label = `${c.name} exact`
      t.equal(await c.send(s.port, label, [['x-tenant', 'acme']]), c.ok, what('exact name answered'))
      let got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'ua:tenant-acme', what('the rule reads the exact name'))
      t.same(merged(got.headers, 'x-tenant'), [['x-tenant', 'acme']], what('and the upstream gets it'))

      // the other spelling alone: no rule read it, so neither may the upstream
      label = `${c.name} variant`
      t.equal(await c.send(s.port, label, [[c.variant, 'globex']]), c.ok, what('variant answered'))
      got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'anonymous', what('the variant is not read'))
      t.same(merged(got.headers, 'x-tenant'), [], what('the variant is stripped'))
      // requests are recorded as their responses end: once the variant's count shows, the exact one's would
      t.ok(await spoofedComesTo(s, before + 1), what('spoofed_header counted for the variant'))
      t.equal(await spoofed(s), before + 1, what('counted once: for the variant, not for the exact name'))

      // both: the exact name decides and is forwarded, the variant is stripped and counted
      before = await spoofed(s)
      label = `${c.name} both`
      t.equal(
        await c.send(s.port, label, [
          ['x-tenant', 'acme'],
          [c.variant, 'globex'],
        ]),
        c.ok,
        what('both answered'),
      )
      got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'ua:tenant-acme', what('the exact name decides'))
      t.same(
        merged(got.headers, 'x-tenant'),
        [['x-tenant', 'acme']],
        what('only the exact name reaches the upstream'),
      )
      t.ok(await spoofedComesTo(s, before + 1), what('spoofed_header counted next to the exact name'))
    }
  }
})

t.test('a rule-named header never travels as a request trailer', async (t) => {
  for (const s of sides) {
    for (const c of clients) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`
      const label = `${c.name} trailer`
      const answer = await c.send(
        s.port,
        label,
        [],
        [
          ['x-tenant', 'globex'],
          [c.variant, 'globex'],
          ['x-digest', 'sha-256=ok'],
        ],
      )
      t.equal(answer, c.ok, what('answered'))
      const got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'anonymous', what('attributed from the header section'))
      t.same(merged(got.trailers, 'x-tenant'), [], what('no spelling of the rule header as a trailer'))
      t.notMatch(field(got.headers, 'trailer') ?? '', /tenant/i, what('nor announced in Trailer'))
      // an h2 client's trailers reach HTTP/2 upstreams only (docs/reference.md "Deviations")
      if (c.name === 'HTTP/1.1' || s.upstream.startsWith('h2c:'))
        t.equal(field(got.trailers, 'x-digest'), 'sha-256=ok', what('other trailers still pass'))
    }
  }
})

t.test('a reload that names another header moves the protection with it', async (t) => {
  const s = sides[0]!
  t.ok(await s.sidecar.reload(ruleOn('x-region', s.upstream)), 'reloaded to a rule on x-region')
  const before = await spoofed(s)
  t.equal(
    await h1Raw(s.port, 'reloaded', [
      ['x-region', 'eu'],
      ['X_Region', 'us'],
      ['X_Tenant', 'globex'],
    ]),
    'HTTP/1.1 200 OK',
  )
  const got = await completed(s, 'reloaded')
  t.equal(field(got.headers, 'x-nhi-identity'), 'ua:tenant-eu', 'the new rule reads x-region')
  t.same(merged(got.headers, 'x-region'), [['x-region', 'eu']], 'the new rule header is guarded')
  t.same(merged(got.headers, 'x-tenant'), [['x_tenant', 'globex']], 'a header no rule names any more passes')
  t.ok(await spoofedComesTo(s, before + 1), 'spoofed_header after the reload')
  const trailer = await h1Raw(
    s.port,
    'reloaded trailer',
    [],
    [
      ['X_Region', 'us'],
      ['x-tenant', 'globex'],
    ],
  )
  t.equal(trailer, 'HTTP/1.1 200 OK')
  const sent = await completed(s, 'reloaded trailer')
  t.same(merged(sent.trailers, 'x-region'), [], 'the new rule header is withheld as a trailer')
  t.same(
    merged(sent.trailers, 'x-tenant'),
    [['x-tenant', 'globex']],
    'the old one is an ordinary trailer again',
  )
})
