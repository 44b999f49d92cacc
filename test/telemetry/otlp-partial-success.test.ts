// A collector that accepts an export only in part (OTLP partial success: 200 with `partial_success` naming
// how many records it rejected) lost those records: they are counted as export_failed, not as exported.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { OtlpExport, zeroCounts } from '../../src/telemetry/otlp.ts'
import { requestEvent } from '../helpers/events.ts'

for (const name of Object.keys(process.env)) if (name.startsWith('OTEL_')) delete process.env[name]

/** ExportTraceServiceResponse / ExportLogsServiceResponse: field 1 partial_success { field 1 rejected: n } */
const partialSuccess = (rejected: number) => Buffer.from([0x0a, 0x02, 0x08, rejected])

t.test('records a collector rejects in a partial success are counted as export_failed', async (t) => {
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      res.setHeader('content-type', 'application/x-protobuf')
      res.end(partialSuccess(req.url === '/v1/logs' ? 2 : 3))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const counts = { spans: zeroCounts(), logs: zeroCounts() }
  const exporter = new OtlpExport(
    {
      url: `${endpoint}/v1/traces`,
      target: `${endpoint}/v1/traces`,
      timeoutMillis: 2_000,
      maxQueueSize: 64,
      maxExportBatchSize: 64,
      scheduledDelayMillis: 10,
      serviceName: 'orders',
      logs: { url: `${endpoint}/v1/logs` },
    },
    'test',
    counts,
  )
  for (let i = 0; i < 10; i++) exporter.record(requestEvent())
  await exporter.close()
  t.same(counts.spans, { exported: 7, queueFull: 0, exportFailed: 3 }, 'spans: 3 of 10 rejected')
  t.same(counts.logs, { exported: 8, queueFull: 0, exportFailed: 2 }, 'log records: 2 of 10 rejected')
})
