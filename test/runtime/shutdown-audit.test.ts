// SIGTERM through the built bundle, with exchanges still under way when timeouts.drain ends: an HTTP/1.1
// request and an HTTP/2 stream the upstream has not answered, and a websocket tunnel (drain never waits for
// one: every long-lived websocket at every rolling deploy). The upstream got each of them, so each has its
// audit line in the file once the process has exited, in one process as with workers.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { holdExchanges, startHoldingUpstream } from '../helpers/holding-upstream.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

for (const workers of [1, 2]) {
  t.test(`exchanges cut at the end of the drain are audited (workers: ${workers})`, async (t) => {
    const up = await startHoldingUpstream()
    t.teardown(() => up.close())
    const auditFile = join(await scratchDir('shutdown-audit'), 'audit.log')
    const sidecar = await startTestSidecar(t, {
      upstream: up.url,
      workers,
      audit: { output: auditFile },
      timeouts: { drain: '300ms' },
    })
    const held = await holdExchanges(sidecar.proxyUrl)
    await eventually(() => up.received.length === 3, { what: 'both requests and the tunnel at the upstream' })

    t.equal(await sidecar.close(), 0, 'exit 0 after SIGTERM')
    t.equal(await held.http1, 'ECONNRESET', 'the HTTP/1.1 client was cut at the end of the drain')
    const lines = (await readFile(auditFile, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    t.same(
      lines.map((l) => `${l['method']} ${l['path']} ${l['status']}`).sort(),
      ['GET /h1-slow 499', 'GET /h2-slow 499', 'GET /ws-session 101'],
      'one line each: a cut request as the client cancelled, the tunnel with the status it was answered',
    )
    const h1 = lines.find((l) => l['path'] === '/h1-slow')
    t.equal(h1?.['upstream_error'], undefined, 'the cut is not an upstream failure')
    const tunnel = lines.find((l) => l['path'] === '/ws-session')
    t.ok(Number(tunnel?.['bytes_in']) > 0, `the tunnel's bytes from the client (${tunnel?.['bytes_in']})`)
    t.ok(Number(tunnel?.['bytes_out']) > 0, `the tunnel's bytes to the client (${tunnel?.['bytes_out']})`)
    t.ok(Number(tunnel?.['duration_ms']) > 0, `and how long it was open (${tunnel?.['duration_ms']} ms)`)
  })
}
