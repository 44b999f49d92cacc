// A start told to stop (StartOptions.stop) ends before it listens and without waiting for what it fetches
// first (keys, range files), whenever the stop came: the CLI aborts the signal as soon as SIGTERM arrives,
// which may be while the start still reads its config, TLS or secret files, before it has begun to wait.
import { once } from 'node:events'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import pino from 'pino'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { startSidecar } from '../../src/runtime.ts'
import { StoppedWhileStarting } from '../../src/startup.ts'

// generous for a loaded machine, far below what the start would wait for its first fetch
const PROMPT_MS = 20_000

t.test('a stop asked for before the start began to wait: it ends at once, no listener', async (t) => {
  // a range file that never comes, with a fetch timeout and a start wait far beyond this test
  const held: ServerResponse[] = []
  const ranges = createServer((_req, res) => void held.push(res))
  ranges.listen(0, '127.0.0.1')
  await once(ranges, 'listening')
  const url = `http://127.0.0.1:${(ranges.address() as AddressInfo).port}/ranges.json`
  const stop = new AbortController()
  stop.abort()
  const started = startSidecar({
    config: configSchema.parse({
      listen: { http: '127.0.0.1:0' },
      admin: '127.0.0.1:0',
      upstream: 'http://127.0.0.1:9',
      audit: { output: 'off' },
      bots: { verify: { ranges: [{ operator: 'Example', url }], fetchTimeout: '10m' } },
    }),
    log: pino({ level: 'silent' }),
    jwksStartTimeoutMs: 600_000,
    stop: stop.signal,
  })
  t.teardown(async () => {
    // the fetch cut, a start that ran on ends too, and is closed if it came to listen
    for (const res of held) res.destroy()
    ranges.closeAllConnections()
    ranges.close()
    const sidecar = await started.catch(() => undefined)
    await sidecar?.close()
  })
  const late = new AbortController()
  const outcome = await Promise.race([
    started.then(
      (sidecar) => ({ sidecar }),
      (err: unknown) => ({ err }),
    ),
    delay(PROMPT_MS, { late: true }, { signal: late.signal }),
  ])
  late.abort()
  t.notOk('late' in outcome, `the start ended within ${PROMPT_MS} ms, the range file still unanswered`)
  t.notOk('sidecar' in outcome, 'never listened')
  t.ok('err' in outcome && outcome.err instanceof StoppedWhileStarting, 'ended as stopped while starting')
})
