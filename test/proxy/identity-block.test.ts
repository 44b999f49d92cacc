// The identity's upstream header lines go to undici as one prepared entry (undici-pool.ts identityBlock). The
// upstream must receive exactly the four lines it received before, in the same place, for every identity; an
// identity whose parts are not printable ASCII, or one past the cap, goes as four ordinary lines. And the
// exchange is the request event: recorders get the event's fields, and nothing of the request path.
import type { IncomingHttpHeaders } from 'node:http'
import t, { type Test } from 'tap'
import constants from 'undici/lib/core/constants.js'
import { identityHeaderBlock, upstreamHeaders } from '../../src/proxy/headers.ts'
import { traceContext } from '../../src/proxy/ids.ts'
import { identityBlock, UNDICI_HEADER_BLOCKS } from '../../src/proxy/undici-pool.ts'
import type { Identity } from '../../src/types.ts'
import { scriptedUpstream } from '../helpers/net.ts'
import { startProxy, TestPipeline } from '../helpers/proxy-fixture.ts'

const identity = (name: string, kind: string, verified: boolean, source = 'jwt'): Identity =>
  ({ name, kind, source, verified, attributes: {} }) as Identity

const record = (constants as { headerNameLowerCasedRecord: Record<string, string | undefined> })
  .headerNameLowerCasedRecord

t.test('a block is the four lines less the last value, known to undici as itself', async (t) => {
  const alice = identity('alice@example.com', 'human', true)
  // alice's request from 10.0.0.1 over http, as it goes upstream: undici's prepared entries (blocks) or lines
  const upstreamOf = (
    incoming: IncomingHttpHeaders,
    { blocks, trustedProxy }: { blocks: boolean; trustedProxy?: boolean },
  ) =>
    upstreamHeaders(
      incoming,
      alice,
      traceContext(undefined),
      'rid',
      '10.0.0.1',
      'http',
      blocks ? UNDICI_HEADER_BLOCKS : undefined,
      trustedProxy,
    )
  const block = identityBlock(alice)
  t.equal(
    block,
    'x-nhi-identity: alice@example.com\r\nx-nhi-kind: human\r\nx-nhi-source: jwt\r\nx-nhi-verified',
  )
  t.equal(record[block!], block, 'entered in the record as itself')
  t.equal(identityBlock(alice), block, 'the same object finds the same string')
  t.equal(identityBlock({ ...alice }), block, 'another object with the same parts shares the entry')
  // a name from client input is percent-encoded as in the plain header; kind and source are not rewritten
  t.equal(
    identityHeaderBlock(identity('bob\r\nx-evil: 1', 'human', false)),
    'x-nhi-identity: bob%0D%0Ax-evil%3A%201\r\nx-nhi-kind: human\r\nx-nhi-source: jwt\r\nx-nhi-verified',
  )
  t.equal(identityBlock(identity('carol', 'human\r\nx-evil: 1', true)), undefined, 'an unsafe kind: no block')
  t.equal(identityBlock(identity('carol', 'human', true, 'jwt\n')), undefined, 'an unsafe source: no block')

  const plain = upstreamOf({ host: 'a' }, { blocks: false })
  const blocked = upstreamOf({ host: 'a' }, { blocks: true })
  t.same(Object.keys(plain).slice(0, 5), [
    'x-nhi-identity',
    'x-nhi-kind',
    'x-nhi-source',
    'x-nhi-verified',
    'x-request-id',
  ])
  t.same(Object.keys(blocked).slice(0, 2), [block, 'x-request-id'], 'the block first, where the lines were')
  t.equal(blocked[block!], 'true')
  const fwd = 'x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host'
  t.equal(record[fwd], fwd, 'the client address block is entered')
  t.equal(blocked[fwd], 'a', 'x-forwarded-host is its value')
  t.equal(blocked['x-forwarded-for'], undefined)
  t.equal(blocked['x-forwarded-proto'], undefined)
  t.equal(blocked['x-forwarded-host'], undefined)
  t.equal(Object.keys(blocked).length, Object.keys(plain).length - 5)
  // a client's x-forwarded-for is appended to: the scheme's block only
  const proto = 'x-forwarded-proto: http\r\nx-forwarded-host'
  const viaProxy = upstreamOf({ host: 'a', 'x-forwarded-for': '192.0.2.1' }, { blocks: true })
  t.equal(record[proto], proto, 'the scheme block is entered')
  t.equal(viaProxy['x-forwarded-for'], '192.0.2.1, 10.0.0.1')
  t.equal(viaProxy[proto], 'a')
  t.same(Object.keys(viaProxy).slice(0, 5), [block, 'x-request-id', 'traceparent', 'x-forwarded-for', proto])
  // an untrusted client's x-forwarded-proto and -host are replaced by this hop's: the same block as for none
  const forged = { host: 'a', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'edge' }
  const replaced = upstreamOf(forged, { blocks: true })
  t.equal(replaced[fwd], 'a', "the forwarded block, with this hop's host")
  t.equal(replaced['x-forwarded-proto'], undefined)
  t.equal(replaced['x-forwarded-host'], undefined)
  const replacedPlain = upstreamOf(forged, { blocks: false })
  t.equal(replacedPlain['x-forwarded-proto'], 'http', 'the same without blocks')
  t.equal(replacedPlain['x-forwarded-host'], 'a')
  // a trusted proxy's x-forwarded-proto is appended to: no block then
  const chained = upstreamOf(forged, { blocks: true, trustedProxy: true })
  t.equal(chained['x-forwarded-proto'], 'https, http')
  t.equal(chained['x-forwarded-host'], 'edge, a')
  t.equal(chained[proto], undefined)
  t.equal(chained[fwd], undefined)
  const chainedPlain = upstreamOf(forged, { blocks: false, trustedProxy: true })
  t.equal(chainedPlain['x-forwarded-proto'], 'https, http', 'the same without blocks')
  t.equal(chainedPlain['x-forwarded-host'], 'edge, a')
  // a trusted proxy's host alone keeps the scheme block, its host in front of ours
  const hostOnly = upstreamOf({ host: 'a', 'x-forwarded-host': 'edge' }, { blocks: true, trustedProxy: true })
  t.equal(hostOnly[fwd], 'edge, a')
})

/** An upstream on a raw socket, so that each request head is kept as sent: answers 200. */
const rawUpstream = (t: Test) => scriptedUpstream(t, () => 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')

/** the header lines of a request head, after the request line */
const lines = (head: string) => head.split('\r\n').slice(1)

t.test('the upstream receives the same four lines for block and plain identities', async (t) => {
  const up = await rawUpstream(t)
  const alice = identity('alice@example.com', 'human', true)
  const robot = identity('svc orders/ü', 'service', false)
  // not printable ASCII in its kind: no block, four lines written by undici (which checks them) as before
  const odd = identity('odd', 'wörker', true)
  const byName: Record<string, Identity> = { alice, robot, odd }
  const pipeline = new TestPipeline((req) => ({ identity: byName[String(req.headers['x-who'])]! }))
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  for (const who of ['alice', 'robot', 'alice', 'robot']) {
    const res = await fetch(`${url}/h`, { headers: { 'x-who': who, 'x-request-id': `rid-${who}` } })
    t.equal(res.status, 200)
    await res.arrayBuffer()
    const head = lines(up.seen.at(-1)!.head)
    const expected = byName[who]!
    const at = head.indexOf(`x-nhi-identity: ${encodeURIComponent(expected.name).replace(/%40/g, '@')}`)
    t.ok(at >= 0, `${who}: x-nhi-identity line`)
    t.same(
      head.slice(at, at + 5),
      [
        head[at],
        `x-nhi-kind: ${expected.kind}`,
        'x-nhi-source: jwt',
        `x-nhi-verified: ${expected.verified}`,
        `x-request-id: rid-${who}`,
      ],
      `${who}: the identity lines, in their order, then the request id`,
    )
    t.match(
      head.slice(at + 5, at + 9),
      [
        /^traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-01$/,
        /^x-forwarded-for: 127\.0\.0\.1$/,
        /^x-forwarded-proto: http$/,
        /^x-forwarded-host: 127\.0\.0\.1:\d+$/,
      ],
      `${who}: then the trace and the forwarded-* lines`,
    )
    t.equal(head.filter((l) => l.startsWith('x-nhi-')).length, 4, `${who}: four identity lines, no more`)
    t.equal(head.filter((l) => l.startsWith('x-forwarded-')).length, 3, `${who}: three forwarded lines`)
  }
  t.equal(identityBlock(robot)?.startsWith('x-nhi-identity: svc%20orders%2F%C3%BC\r\n'), true)
  // undici rejects a header value that is not a valid field value: the odd identity fails as before
  const res = await fetch(`${url}/h`, { headers: { 'x-who': 'odd' } })
  await res.arrayBuffer()
  t.equal(identityBlock(odd), undefined, 'no block for the odd identity')
  t.equal(
    lines(up.seen.at(-1)!.head).filter((l) => l.startsWith('x-nhi-kind')).length,
    res.status === 200 ? 1 : 0,
    'written as an ordinary line when undici sends it at all',
  )
})

t.test('the recorded exchange is the request event, without the request path', async (t) => {
  const up = await rawUpstream(t)
  const pipeline = new TestPipeline()
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  const res = await fetch(`${url}/a/b?q=1`, {
    headers: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00' },
  })
  await res.arrayBuffer()
  const [e] = await pipeline.waitForEvents(1)
  if (!e) throw new Error('no event')
  t.equal(e.status, 200)
  t.equal(e.path, '/a/b')
  t.equal(e.traceId, '4bf92f3577b34da6a3ce929d0e0e4736')
  t.equal(e.parentSpanId, '00f067aa0ba902b7')
  t.equal(e.traceFlags, '00')
  t.equal(e.identity.name, 'payments/api')
  t.equal(e.service, 'checkout')
  t.ok(e.durationMs > 0)
  const json = JSON.parse(JSON.stringify(e)) as Record<string, unknown>
  t.same(
    Object.keys(json).sort(),
    [
      'anomalies',
      'bytesIn',
      'bytesOut',
      'clientAddress',
      'decision',
      'durationMs',
      'failures',
      'fingerprints',
      'host',
      'identity',
      'method',
      'parentSpanId',
      'path',
      'requestId',
      'route',
      'service',
      'spanId',
      'status',
      'time',
      'traceFlags',
      'traceId',
      'upstreamMs',
    ],
    'JSON of an event has the event fields only',
  )
  const rest = e as unknown as Record<string, unknown>
  t.equal(rest.req, undefined, 'the request is let go')
  t.equal(rest.res, undefined, 'the response is let go')
  t.same(rest.headers, {}, 'the request headers are let go')
  t.equal(rest.pipeline, undefined, 'the pipeline is let go')
  t.equal(rest.url, '', 'the raw target and its query are let go')
})
