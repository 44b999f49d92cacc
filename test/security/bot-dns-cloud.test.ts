// Reverse-then-forward DNS must only vouch for the operator's crawler hosts. Every Google Compute Engine
// address has a PTR name `<reversed-ip>.bc.googleusercontent.com` that resolves back to it, so any VM
// rented there that sends `Googlebot/2.1` passes a check that accepts the whole googleusercontent.com domain
// (the default) and is attributed as the verified crawler `googlebot`.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'
import { startDns } from '../helpers/dns.ts'

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'

t.test(
  'a Compute Engine VM claiming Googlebot is not a verified googlebot (default DNS domains)',
  async (t) => {
    // what the public DNS says for a GCE VM's external address (34.0.2.10 is not in the shipped Googlebot ranges)
    const vm = '34.0.2.10'
    const ptr = '10.2.0.34.bc.googleusercontent.com'
    const dns = await startDns({ ptr: { [vm]: ptr }, a: { [ptr]: vm } })
    t.teardown(() => dns.socket.close())
    const config = configSchema.parse({
      bots: { verify: { dns: { enabled: true, servers: [dns.server], timeout: '2s' } } },
    })
    const engine = new AttributionPipeline(config)
    t.teardown(() => engine.close())
    const from = () =>
      engine.evaluate(
        { method: 'GET', path: '/', url: '/', headers: { 'user-agent': GOOGLEBOT } },
        { remoteAddress: vm, remotePort: 1, tls: false },
      ) as Awaited<ReturnType<AttributionPipeline['evaluate']>>
    from()
    await engine.settled()
    const later = from()
    t.equal(later.identity.verified, false, 'a rented VM is not Google’s crawler')
    t.equal(later.identity.name, 'ua:googlebot')
    t.same(later.evidence.anomalies, ['unverified_claim'])
  },
)
