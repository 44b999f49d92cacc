// Reverse-then-forward DNS must only vouch for the operator's crawler hosts. Every Google Compute Engine
// address has a PTR name `<reversed-ip>.bc.googleusercontent.com` that resolves back to it, so any VM
// rented there that sends `Googlebot/2.1` passes a check that accepts the whole googleusercontent.com domain
// (the default) and is attributed as the verified crawler `googlebot`.
import { createSocket, type Socket } from 'node:dgram'
import { once } from 'node:events'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'

interface Zone {
  ptr: Record<string, string>
  a: Record<string, string>
}

function encodeName(name: string): Buffer {
  const parts = name.split('.').filter(Boolean)
  return Buffer.concat([
    ...parts.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p)])),
    Buffer.from([0]),
  ])
}

function answerQuery(msg: Buffer, zone: Zone): Buffer {
  let off = 12
  const labels: string[] = []
  while (msg[off]! !== 0) {
    const len = msg[off]!
    labels.push(msg.subarray(off + 1, off + 1 + len).toString())
    off += len + 1
  }
  off++
  const qtype = msg.readUInt16BE(off)
  const question = msg.subarray(12, off + 4)
  const name = labels.join('.').toLowerCase()
  let rdata: Buffer | undefined
  if (qtype === 12 && name.endsWith('.in-addr.arpa')) {
    const ip = labels.slice(0, 4).reverse().join('.')
    if (zone.ptr[ip]) rdata = encodeName(zone.ptr[ip])
  } else if (qtype === 1 && zone.a[name]) {
    rdata = Buffer.from(zone.a[name].split('.').map(Number))
  }
  const header = Buffer.alloc(12)
  header.writeUInt16BE(msg.readUInt16BE(0), 0)
  header.writeUInt16BE(rdata ? 0x8180 : 0x8183, 2)
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(rdata ? 1 : 0, 6)
  if (!rdata) return Buffer.concat([header, question])
  const rr = Buffer.alloc(12)
  rr.writeUInt16BE(0xc00c, 0)
  rr.writeUInt16BE(qtype, 2)
  rr.writeUInt16BE(1, 4)
  rr.writeUInt32BE(60, 6)
  rr.writeUInt16BE(rdata.length, 10)
  return Buffer.concat([header, question, rr, rdata])
}

async function startDns(zone: Zone): Promise<{ socket: Socket; server: string }> {
  const socket = createSocket('udp4')
  socket.on('message', (msg, rinfo) => socket.send(answerQuery(msg, zone), rinfo.port, rinfo.address))
  socket.bind(0, '127.0.0.1')
  await once(socket, 'listening')
  return { socket, server: `127.0.0.1:${socket.address().port}` }
}

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
