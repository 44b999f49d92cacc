// Large bodies stream through the proxy with flat memory. The proxy runs as the image starts it — the bundle,
// `node nhi-proxy.mjs run`, in a child process on the node running this test — and its RSS is read from
// /proc/<pid>/status (samples plus the kernel's peak mark), so only the proxy's memory is measured: this
// process is the client and the upstream, and their buffers never count. The 1 GB-each-way numbers per
// Node version are in bench/README.md (`node --import ./scripts/register-ts.mjs bench/stream.ts`).
import { connect } from 'node:net'
import t from 'tap'
import {
  MB,
  measureStream,
  type ProxyChild,
  rssOf,
  type StreamUpstream,
  startBundledProxy,
  startStreamUpstream,
} from '../../bench/lib/stream-rss.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { assertFreshBundle, BUNDLE } from '../helpers/sidecar.ts'

const SIZE = 256 * MB
/**
 * The proxy's RSS may rise at most this far above its warmed-up baseline while SIZE goes each way: half of
 * one body, so a forwarder that holds a body (or most of one) in memory fails. A streaming proxy stays far
 * below: garbage socket buffers awaiting collection, measured +15–75 MB on Node 20, 22 and 24.
 */
const BOUND = 128 * MB
const mb = (n: number) => (n / MB).toFixed(1)

let proxy: ProxyChild
let upstream: StreamUpstream

t.before(async () => {
  // the built bundle, checked to be newer than every source, so the test never runs a stale dist/
  assertFreshBundle()
  upstream = await startStreamUpstream()
  t.teardown(() => upstream.close())
  proxy = await startBundledProxy(BUNDLE, upstream.url)
  t.teardown(() => proxy.stop())
})

t.test(
  `${SIZE / MB} MB up and ${SIZE / MB} MB down keep the proxy's RSS within ${BOUND / MB} MB`,
  async (t) => {
    const r = await measureStream(proxy, SIZE, { warmup: 8 * MB })
    t.equal(r.upload.bytes, SIZE, 'upstream received every byte')
    t.equal(r.upload.transferEncoding, 'chunked', 'streamed, not buffered into a content-length')
    t.equal(r.download.bytes, SIZE, 'client received every byte')
    t.equal(r.download.contentLength, String(SIZE))
    t.ok(
      r.growth < BOUND,
      `proxy (node ${r.node}) RSS ${mb(r.baseline)} MB at rest, rose ${mb(r.growth)} MB while moving ` +
        `${SIZE / MB} MB each way (bound ${BOUND / MB} MB; upload ${mb(r.upload.min)}–${mb(r.upload.max)}, ` +
        `download ${mb(r.download.min)}–${mb(r.download.max)} MB)`,
    )
    // the warm-up's two requests, then the measured two
    const audit = await eventually(() => {
      const events = proxy.audit()
      return events.length >= 4 ? events : undefined
    })
    t.equal(audit[2]!['bytes_in'], SIZE, 'upload bytes counted')
    t.equal(audit[3]!['bytes_out'], SIZE, 'download bytes counted')
  },
)

t.test('a client that stops reading does not make the proxy buffer the response', async (t) => {
  const rssBefore = rssOf(proxy.pid)
  const sentBefore = upstream.sent()
  const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.write(`GET /bytes/${SIZE} HTTP/1.1\r\nhost: x\r\n\r\n`)
  let got = 0
  socket.once('data', (c: Buffer) => {
    got += c.length
    socket.pause()
  })
  await eventually(() => got > 0, { what: 'the response to start' })
  // a negative assertion: for 1.5 s the proxy neither buffers the response nor keeps pulling it upstream
  const bounded = await stillTrueFor(
    () => rssOf(proxy.pid) - rssBefore < 64 * MB && upstream.sent() - sentBefore < SIZE / 4,
    1500,
    { intervalMs: 100 },
  )
  const growth = rssOf(proxy.pid) - rssBefore
  const pulled = upstream.sent() - sentBefore
  t.ok(bounded, 'memory and upstream reads stayed bounded while the client did not read')
  t.ok(got > 0, 'the response started')
  t.ok(
    growth < 64 * MB,
    `proxy RSS grew ${mb(growth)} MB with a stalled reader on a ${SIZE / MB} MB response`,
  )
  t.ok(pulled < SIZE / 4, `only ${mb(pulled)} MB were pulled from the upstream`)
  socket.destroy()
})
