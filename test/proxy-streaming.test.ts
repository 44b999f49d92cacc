import { connect } from 'node:net'
import { Readable } from 'node:stream'
import t from 'tap'
import { Agent, request } from 'undici'
import { startUpstream } from './helpers/upstream.ts'
import { startProxy } from './proxy-fixture.ts'

const SIZE = 200 * 1024 * 1024
const MB = 1024 * 1024
const agent = new Agent()
t.teardown(() => agent.close())

function generated(total: number): Readable {
  const chunk = Buffer.alloc(64 * 1024, 0x62)
  let left = total
  return new Readable({
    read() {
      if (left <= 0) return this.push(null)
      const n = Math.min(left, chunk.length)
      left -= n
      this.push(n === chunk.length ? chunk : chunk.subarray(0, n))
    },
  })
}

t.test('200 MB upload and download stream with flat memory', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  globalThis.gc?.()
  const rssBefore = process.memoryUsage().rss
  let peak = rssBefore
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss)
  }, 20)
  t.teardown(() => clearInterval(sampler))

  const upload = await request(`${url}/echo`, {
    dispatcher: agent,
    method: 'PUT',
    body: generated(SIZE),
  })
  t.equal(upload.statusCode, 200)
  const echo = (await upload.body.json()) as { bodyBytes: number; headers: Record<string, string> }
  t.equal(echo.bodyBytes, SIZE, 'upstream received every byte')
  t.equal(echo.headers['transfer-encoding'], 'chunked', 'streamed, not buffered into a content-length')

  const download = await request(`${url}/bytes/${SIZE}`, { dispatcher: agent })
  t.equal(download.statusCode, 200)
  t.equal(download.headers['content-length'], String(SIZE))
  let received = 0
  for await (const chunk of download.body) received += (chunk as Buffer).length
  t.equal(received, SIZE)
  clearInterval(sampler)

  const growth = (peak - rssBefore) / MB
  t.ok(growth < 120, `RSS grew ${growth.toFixed(1)} MB while moving 400 MB`)
  const events = await pipeline.waitForEvents(2)
  t.equal(events[0]!.bytesIn, SIZE, 'upload bytes counted')
  t.equal(events[1]!.bytesOut, SIZE, 'download bytes counted')
})

t.test('a client that stops reading does not make the proxy buffer the response', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { port, pipeline } = await startProxy(t, { upstream: up.url })
  const rssBefore = process.memoryUsage().rss
  const socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.write(`GET /bytes/${SIZE} HTTP/1.1\r\nhost: x\r\n\r\n`)
  let got = 0
  socket.once('data', (c: Buffer) => {
    got += c.length
    socket.pause()
  })
  await new Promise((r) => setTimeout(r, 1500))
  const growth = (process.memoryUsage().rss - rssBefore) / MB
  t.ok(got > 0, 'the response started')
  t.ok(growth < 60, `RSS grew ${growth.toFixed(1)} MB with a stalled reader on a 200 MB response`)
  socket.destroy()
  const [event] = await pipeline.waitForEvents(1)
  t.ok(event!.bytesOut < SIZE / 2, `only ${event!.bytesOut} bytes were pulled from the upstream`)
  t.equal(event!.status, 200)
})
