// One malformed HTTP/2 stream and a well-formed one behind it, in the same read. nghttp2 finds the first
// malformed (DATA past its content-length, RFC 9113 §8.1.1) while it parses; Node 22.23 destroys the whole
// session from inside that parse, and the DATA of the stream behind it then reaches a stream node:http2 never
// set up: the process aborts on an internal assertion (`onread->IsFunction()`). One packet from any client,
// over h2c or TLS, took the proxy down. Held on every Node: the proxy outlives the packet and serves the next
// connection, the malformed stream never reaches the upstream whole, and the connection ends or answers.
// The same for the connection the proxy itself ends for a rapid reset, with a stream's DATA behind the resets.
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { connect as h2Connect } from 'node:http2'
import { connect as tcpConnect } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE } from '../helpers/h2-frames.ts'
import { createServerPki, mtlsListen } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.setTimeout(90_000)

/** what the malformed stream carries: a whole HTTP/1.1 request, which an upstream must never get as a body */
const BODY = Buffer.from('GET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n', 'latin1')

const request = (method: string, path: string, extra: [string, string][] = []): [string, string][] => [
  [':method', method],
  [':scheme', 'http'],
  [':authority', 'app.example'],
  [':path', path],
  ...extra,
]

/** HEADERS and one DATA frame that ends the stream */
const withBody = (id: number, fields: [string, string][]) => [
  frame(FRAME.HEADERS, FLAG.END_HEADERS, id, headerBlock(fields)),
  frame(FRAME.DATA, FLAG.END_STREAM, id, BODY),
]

/** content-length 0 and DATA past it, then a stream with a body of the length it announces, and a GET */
function malformedThenWellFormed(): Buffer[] {
  return [
    ...withBody(1, request('POST', '/echo/malformed', [['content-length', '0']])),
    ...withBody(3, request('POST', '/echo/behind', [['content-length', String(BODY.length)]])),
    frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 5, headerBlock(request('GET', '/echo/get'))),
  ]
}

/** twice the reset budget of streams opened and reset, then a stream with its body */
function resetsThenBody(budget: number): Buffer[] {
  const cancel = Buffer.alloc(4)
  cancel.writeUInt32BE(8)
  const frames: Buffer[] = []
  let id = 1
  for (; id < 1 + 4 * budget; id += 2) {
    frames.push(
      frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, id, headerBlock(request('GET', '/slow/2000'))),
    )
    frames.push(frame(FRAME.RST_STREAM, 0, id, cancel))
  }
  frames.push(
    ...withBody(id, request('POST', '/echo/after-resets', [['content-length', String(BODY.length)]])),
  )
  return frames
}

const RESET_BUDGET = 10

const CASES = [
  ['a stream with DATA past its content-length, then streams with their DATA', malformedThenWellFormed],
  [
    'streams reset past the rapid-reset budget, then a stream with its DATA',
    () => resetsThenBody(RESET_BUDGET),
  ],
] as const

/** writes the frames in one write after the preface and SETTINGS; resolves once the connection has ended */
async function sendInOneWrite(socket: import('node:net').Socket, frames: Buffer[]): Promise<void> {
  socket.on('error', () => {})
  socket.on('data', () => {})
  socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)), ...frames]))
  // each case ends the connection (the reset budget's GOAWAY, or the idle timeout)
  await eventually(() => socket.destroyed || socket.readableEnded, {
    what: 'the connection to end',
    timeoutMs: 20_000,
  })
}

/** the status of a request on a new HTTP/2 connection; rejects if the connection fails */
async function nextStatus(url: string): Promise<unknown> {
  const client = h2Connect(url)
  try {
    const failed = once(client, 'error').then(([err]) => Promise.reject(err as Error))
    const stream = client.request({ ':path': '/echo/next' })
    stream.end()
    const [headers] = (await Promise.race([once(stream, 'response'), failed])) as [Record<string, unknown>]
    stream.resume()
    await Promise.race([once(stream, 'end'), failed])
    return headers[':status']
  } finally {
    client.destroy()
  }
}

for (const transport of ['h2c', 'h2 over TLS'] as const) {
  t.test(`${transport}: the proxy outlives a malformed stream and the streams read with it`, async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const { ca, server } = await createServerPki()
    const sidecar = await startTestSidecar(t, {
      listen: mtlsListen(server, ca),
      upstream: upstream.url,
      timeouts: { idle: '2s' },
      limits: { http2MaxResetsPerSecond: RESET_BUDGET },
    })
    const caPem = await readFile(ca.certFile, 'utf8')
    for (const [name, frames] of CASES) {
      const socket =
        transport === 'h2c'
          ? tcpConnect(sidecar.proxyAddress.port, '127.0.0.1')
          : tlsConnect({
              port: sidecar.httpsAddress!.port,
              host: '127.0.0.1',
              servername: 'localhost',
              ca: caPem,
              ALPNProtocols: ['h2'],
            })
      t.teardown(() => socket.destroy())
      await once(socket, transport === 'h2c' ? 'connect' : 'secureConnect')
      await sendInOneWrite(socket, frames())
      t.notOk(
        upstream.received.some((r) => r.url === '/echo/malformed' && r.bodyBytes > 0),
        `${name}: the malformed stream never reached the upstream with its DATA`,
      )
      const status = await nextStatus(sidecar.proxyUrl).catch(
        (err: Error) => `${err.message}; ${sidecar.process.stderr().slice(-300)}`,
      )
      t.equal(status, 200, `${name}: the proxy is still running and serves the next connection`)
    }
  })
}
