// What OTLP export costs the request thread itself, without sockets or load generator: the CPU time of the
// calling thread (/proc/thread-self/schedstat, so neither the export thread nor other processes count) for
// handing N finished requests to a running export thread, against the same loop with export off. The
// export thread runs the real SDK against a collector that is down (a closed port), as on a sidecar.
// `--src DIR` measures another checkout's sources (an earlier commit) the same way: alternate the two.
//   node --import ./scripts/register-ts.mjs bench/otlp-handoff.ts [--src DIR] [--requests N] [--rounds R]
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import type { RequestEvent } from '../src/types.ts'
import { freePort } from './lib/procs.ts'

const { values } = parseArgs({
  options: {
    src: { type: 'string' },
    requests: { type: 'string', default: '100000' },
    rounds: { type: 'string', default: '5' },
  },
})
const root = values.src ?? new URL('..', import.meta.url).pathname
const { OtlpThread } = (await import(
  `${root}/src/telemetry/otlp-thread.ts`
)) as typeof import('../src/telemetry/otlp-thread.ts')
const N = Number(values.requests)
const threadCpuUs = () => Number(readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ')[0]) / 1000

// a port nothing listens on: every export is refused at once. Not one port 0 gave and was closed again: the
// kernel hands that one to the next outgoing connection or port-0 listener on the machine, while this one
// is below that range and reserved against other processes' freePort for the run
const downPort = await freePort()

// the bench's traffic: 100 Kubernetes service accounts with JWTs, one route, the engine's shared objects
const identities = Array.from({ length: 100 }, (_, i) => ({
  name: `system:serviceaccount:bench:sa-${i}`,
  kind: 'service' as const,
  source: 'jwt' as const,
  verified: true,
  rule: 'builtin:kubernetes',
  attributes: {
    iss: 'https://kubernetes.default.svc',
    sub: `system:serviceaccount:bench:sa-${i}`,
    jti: `j-${i}`,
  },
}))
const decision = { decision: 'allow' as const, rule: 'default', skipped: true }
const hex = (n: number) =>
  Array.from({ length: n }, () => Math.floor(Math.random() * 16).toString(16)).join('')
const events: RequestEvent[] = Array.from({ length: 1024 }, (_, i) => ({
  time: Date.now(),
  traceId: hex(32),
  spanId: hex(16),
  traceFlags: '01',
  requestId: `0f0e0d0c-0b0a-0908-0706-${String(i).padStart(12, '0')}`,
  identity: identities[i % 100]!,
  fingerprints: { jwt: hex(16) },
  failures: [],
  anomalies: [],
  decision,
  clientAddress: '127.0.0.1',
  host: '127.0.0.1:8080',
  method: 'GET',
  path: '/api/v1/orders/42',
  route: 'other',
  status: 200,
  durationMs: 1.234,
  upstreamMs: 0.987,
  bytesIn: 0,
  bytesOut: 2,
  service: 'bench',
}))

function loop(record: (e: RequestEvent) => void): number {
  const start = threadCpuUs()
  for (let i = 0; i < N; i++) {
    const e = events[i & 1023]!
    e.time = 1_764_800_000_000 + i
    record(e)
  }
  return (threadCpuUs() - start) / N
}

const counts = () => ({ exported: 0, queueFull: 0, exportFailed: 0 })
const off: number[] = []
const on: number[] = []
for (let round = 1; round <= Number(values.rounds); round++) {
  off.push(loop(() => {}))
  const thread = new OtlpThread({
    settings: {
      url: `http://127.0.0.1:${downPort}/v1/traces`,
      target: 'down',
      timeoutMillis: 1000,
      // large enough that no request is dropped: every one is handed over
      maxQueueSize: 4 * N,
      maxExportBatchSize: 512,
      scheduledDelayMillis: 200,
      serviceName: 'bench',
      logs: { url: `http://127.0.0.1:${downPort}/v1/logs` },
    },
    version: 'bench',
    counts: { spans: counts(), logs: counts() },
  })
  // the thread starts (and loads the SDK) before the measurement
  await new Promise((r) => setTimeout(r, 1500))
  on.push(loop((e) => thread.record(e)))
  await thread.close()
  console.log(
    `round ${round}: export off ${off.at(-1)!.toFixed(3)} µs/req, on ${on.at(-1)!.toFixed(3)} µs/req`,
  )
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!
console.log(
  `median over ${on.length} rounds of ${N} requests: request-thread CPU of the hand-off ${(median(on) - median(off)).toFixed(2)} µs/req (${root})`,
)
