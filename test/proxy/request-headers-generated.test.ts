// Request header fields end to end, hand-written cases: what the built proxy passes on of a request's header
// section, from HTTP/1.1 and h2c clients to HTTP/1.1 (`http://`) and h2c (`h2c://`) upstreams, where it was
// not what RFC 9110 and RFC 9113 have an intermediary send. HTTP/1.1 requests are raw bytes, h2c ones
// hand-encoded HEADERS frames (node:http2 would refuse to send some). The recording upstream keeps each
// request's field lines as they arrived; they are compared by name (lower case), the lines of one name
// combined in order as RFC 9110 §5.3 lets any recipient combine them (Cookie with "; ", RFC 9113 §8.2.3).
import t, { type Test } from 'tap'
import { FLAG, FRAME, frame, headerBlock, PREFACE, streamAnswers } from '../helpers/h2-frames.ts'
import { type Pairs, type RecordingUpstream, recordingUpstreams } from '../helpers/header-spellings.ts'
import { rawExchange } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** the loopback address of the proxy in front the sidecar trusts (forwardedClientCert.trustedProxies) */
const TRUSTED = '127.0.0.2'
const HOST = 'app.example'

const lower = (s: string) => s.toLowerCase()
const trimmed = (v: string) => v.replace(/^[ \t]+|[ \t]+$/g, '')

/**
 * The lines of one name combined as RFC 9110 §5.3 allows a recipient to, in order (Cookie as RFC 9113 §8.2.3),
 * without whitespace at either end, which is no part of a field value (RFC 9110 §5.5): an empty last line
 * leaves none.
 */
function combine(name: string, values: string[]): string {
  return trimmed(values.join(name === 'cookie' ? '; ' : ', '))
}

/** one request as a client sends it: its field lines (name as sent, value without OWS) in order */
interface Sent {
  client: 'h1' | 'h2'
  lines: Pairs
  /** from the trusted proxy's address */
  trusted: boolean
  /** HTTP/1.1: a chunked body (a POST), with an announced trailer section when the lines name one */
  chunked: boolean
}

// ---- the clients ------------------------------------------------------------------------------------------

/** One HTTP/1.1 request on a connection of its own (it asks to close it); resolves with the status line. */
async function h1Send(port: number, id: string, sent: Sent): Promise<string> {
  const body = sent.chunked
    ? `5\r\nhello\r\n0\r\n${sent.lines.some(([n]) => n === 'Trailer') ? 'x-t: 1\r\n' : ''}\r\n`
    : ''
  const head =
    `${sent.chunked ? 'POST' : 'GET'} /r/${id} HTTP/1.1\r\nHost: ${HOST}\r\nx-case: ${id}\r\n` +
    sent.lines.map(([name, value]) => `${name}: ${value}\r\n`).join('') +
    'Connection: close\r\n\r\n'
  const answer = await rawExchange(
    port,
    Buffer.from(head + body, 'latin1'),
    sent.trusted ? TRUSTED : undefined,
  )
  return answer.slice(0, answer.indexOf('\r\n'))
}

/** h2c requests as HEADERS frames on one connection, streams 1, 3, …; resolves with each one's answer */
async function h2Send(
  port: number,
  requests: { id: string; sent: Sent }[],
  trusted: boolean,
): Promise<string[]> {
  const streams = requests.map((_, i) => 2 * i + 1)
  const frames = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
  for (const [i, { id, sent }] of requests.entries()) {
    const block = headerBlock([
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', `/r/${id}`],
      [':authority', HOST],
      ['x-case', id],
      ...sent.lines,
    ])
    frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, streams[i]!, block))
  }
  const answers = await streamAnswers(port, frames, streams, {
    what: `the answers to ${requests.map((r) => r.id).join(', ')}`,
    ...(trusted ? { localAddress: TRUSTED } : {}),
  })
  return streams.map((s) => answers.get(s)!)
}

// ---- the sidecar ------------------------------------------------------------------------------------------

type Upstream = 'http' | 'h2c'
const UPSTREAMS: Upstream[] = ['http', 'h2c']
const label = (kind: Upstream) => (kind === 'http' ? 'an HTTP/1.1' : 'an h2c')

/** a recording upstream of `kind` and the built sidecar in front of it, trusting TRUSTED */
async function sidecarFor(t: Test, kind: Upstream): Promise<{ upstream: RecordingUpstream; port: number }> {
  const upstreams = await recordingUpstreams(t)
  const upstream = kind === 'http' ? upstreams.h1 : upstreams.h2c
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    forwardedClientCert: { trustedProxies: [`${TRUSTED}/32`], format: 'xfcc' },
  })
  return { upstream, port: sidecar.proxyAddress.port }
}

/** one request of either client, alone on its connection; resolves with its answer */
const sendOne = async (port: number, id: string, sent: Sent) =>
  sent.client === 'h1' ? h1Send(port, id, sent) : (await h2Send(port, [{ id, sent }], sent.trusted))[0]!

// ---- the cases --------------------------------------------------------------------------------------------

interface Case {
  what: string
  client: 'h1' | 'h2'
  lines: Pairs
  chunked?: boolean
  /** what the upstream must get under these names, their lines combined; undefined: none */
  want: Record<string, string | undefined>
  /** the same, on an HTTP/1.1 upstream only */
  overHttp?: Record<string, string | undefined>
}

const CASES: Case[] = [
  {
    what: 'an empty last Cookie line: the cookies reach an h2c upstream, not dropped there for a trailing space',
    client: 'h1',
    lines: [
      ['Cookie', 'a=1'],
      ['Cookie', 'b=2'],
      ['Cookie', ''],
    ],
    want: { cookie: 'a=1; b=2;' },
  },
  {
    what: 'an empty last cookie crumb from an h2c client',
    client: 'h2',
    lines: [
      ['cookie', 'a=1'],
      ['cookie', ''],
    ],
    want: { cookie: 'a=1;' },
  },
  {
    what: 'a field whose last line is empty',
    client: 'h1',
    lines: [
      ['X-List', 'a'],
      ['x-list', ''],
    ],
    want: { 'x-list': 'a,' },
  },
  {
    what: 'If-None-Match and If-Match in several h2c lines: every entity tag',
    client: 'h2',
    lines: [
      ['if-none-match', '"a"'],
      ['if-match', '"c"'],
      ['if-none-match', '"b"'],
      ['if-match', '"d"'],
      ['if-match', 'W/"e"'],
    ],
    want: { 'if-none-match': '"a", "b"', 'if-match': '"c", "d", W/"e"' },
  },
  {
    what: 'Content-Encoding and Content-Language in several h2c lines: every coding and language',
    client: 'h2',
    lines: [
      ['content-encoding', 'gzip'],
      ['content-language', 'en'],
      ['content-encoding', 'br'],
      ['content-language', 'de'],
    ],
    want: { 'content-encoding': 'gzip, br', 'content-language': 'en, de' },
  },
  {
    what: 'a TE element that only contains the word (x-trailers) is not trailers',
    client: 'h1',
    lines: [['TE', 'x-trailers, gzip;q=0.5']],
    want: { te: undefined },
  },
  {
    what: 'TE with trailers among codings: te: trailers, named in Connection to an HTTP/1.1 upstream',
    client: 'h1',
    lines: [['TE', 'gzip, Trailers']],
    want: { te: 'trailers' },
    overHttp: { connection: 'keep-alive, te' },
  },
  {
    what: 'the same on a chunked body with announced trailers (the node:http path)',
    client: 'h1',
    chunked: true,
    lines: [
      ['TE', 'trailers'],
      ['Transfer-Encoding', 'chunked'],
      ['Trailer', 'x-t'],
    ],
    want: { te: 'trailers' },
    overHttp: { connection: 'keep-alive, te', trailer: 'x-t' },
  },
  {
    what: "an h2c client's te: trailers, named in Connection to an HTTP/1.1 upstream",
    client: 'h2',
    lines: [['te', 'trailers']],
    want: { te: 'trailers' },
    overHttp: { connection: 'keep-alive, te' },
  },
]

for (const kind of UPSTREAMS) {
  t.test(`hand-written cases, to ${label(kind)} upstream`, async (t) => {
    const { upstream, port } = await sidecarFor(t, kind)
    for (const [i, c] of CASES.entries()) {
      const id = `case-${kind}-${i}`
      const sent: Sent = { client: c.client, lines: c.lines, trusted: false, chunked: c.chunked === true }
      await sendOne(port, id, sent)
      const received = upstream.seen.get(id)?.headers ?? []
      const want = { ...c.want, ...(kind === 'http' ? c.overHttp : {}) }
      for (const [name, value] of Object.entries(want)) {
        const lines = received.filter(([n]) => lower(n) === name).map(([, v]) => v)
        t.equal(lines.length === 0 ? undefined : combine(name, lines), value, `${c.what}: ${name}`)
      }
    }
  })
}
