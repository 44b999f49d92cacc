// Starts a real admin server on an ephemeral port around a Telemetry instance; closed on teardown.
import { type AdminServerOptions, createAdminServer } from '../../src/admin/server.ts'
import type { Telemetry } from '../../src/telemetry/index.ts'

export interface Teardown {
  teardown(fn: () => unknown): void
}

export async function startAdmin(
  t: Teardown,
  telemetry: Telemetry,
  opts: Partial<Omit<AdminServerOptions, 'host' | 'port' | 'telemetry'>> = {},
): Promise<string> {
  const admin = createAdminServer({
    host: '127.0.0.1',
    port: 0,
    ...opts,
    telemetry,
    ready: opts.ready ?? (async () => ({ ok: true, checks: {} })),
    effectiveConfig: opts.effectiveConfig ?? (() => ({})),
  })
  const addr = await admin.listen()
  t.teardown(() => telemetry.close())
  t.teardown(() => admin.close())
  return `http://127.0.0.1:${addr.port}`
}
