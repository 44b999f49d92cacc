// SIGTERM under load, through the real CLI: every in-flight request finishes, connections opened during the
// drain delay are still answered (never refused, never a hang or a half answer), and the process exits 0.
import { writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { Agent, request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { spawnCli } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** Outcome of a fresh TCP connection + request: an HTTP status, 'refused', 'closed' (no bytes) or 'hang'. */
function freshRequest(port: number, timeoutMs = 4000): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    let text = ''
    const timer = setTimeout(() => {
      s.destroy()
      resolve('hang')
    }, timeoutMs)
    s.on('connect', () => s.write('GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'))
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1')
    })
    s.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      resolve(err.code === 'ECONNREFUSED' ? 'refused' : text ? text.slice(9, 12) : 'closed')
    })
    s.on('close', () => {
      clearTimeout(timer)
      resolve(text ? text.slice(9, 12) : 'closed')
    })
  })
}

t.test('SIGTERM with 40 requests in flight: all finish, new ones are still answered, exit 0', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('term')
  const file = join(dir, 'config.yaml')
  await writeFile(
    file,
    `service: term-test
listen: { http: 127.0.0.1:0 }
admin: 127.0.0.1:0
upstream: ${upstream.url}
audit: { output: off }
timeouts: { drain: 10s, drainDelay: 3s }
`,
  )
  const cli = spawnCli(['run', '-c', file])
  t.teardown(() => cli.kill('SIGKILL'))
  const started = await cli.waitFor(/"listen":"127\.0\.0\.1:(\d+)"/)
  const port = Number(started[1])
  const proxy = `http://127.0.0.1:${port}`
  const dispatcher = new Agent({ connections: 64 })
  t.teardown(() => dispatcher.close())

  const inFlight = Array.from({ length: 40 }, async (_, i) => {
    try {
      const res = await request(`${proxy}/slow/${1200 + (i % 5) * 100}`, { dispatcher })
      return `${res.statusCode} ${await res.body.text()}`
    } catch (err) {
      return `error ${(err as Error).message}`
    }
  })
  await eventually(() => upstream.received.filter((r) => r.url.startsWith('/slow/')).length === 40, {
    what: '40 requests at the upstream',
  })
  const logged = cli.stderr().length
  cli.child.kill('SIGTERM')
  await cli.waitForLog((l) => l['event'] === 'draining', logged)

  // during the drain delay: new connections are still accepted and answered (endpoints may lag behind)
  const during = await Promise.all(Array.from({ length: 10 }, () => freshRequest(port)))
  t.same(
    during.filter((outcome) => outcome !== '200'),
    [],
    'a new request during the drain delay is answered',
  )

  const results = await Promise.all(inFlight)
  t.same(
    results.filter((r) => r !== '200 slow ok'),
    [],
    'every in-flight request completed with its full answer',
  )
  t.equal(await cli.exited, 0, 'exit code 0 after the drain')
  t.equal(await freshRequest(port, 1000), 'refused', 'nothing listens after exit')
})
