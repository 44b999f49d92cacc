// A tiny DNS server on loopback for the bot-verification tests: PTR and A answers from two tables, NXDOMAIN for
// everything else (real UDP, the resolver the proxy uses is pointed at it with bots.verify.dns.servers).
import { createSocket, type Socket } from 'node:dgram'
import { once } from 'node:events'

export interface Zone {
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

export async function startDns(
  zone: Zone,
  opts: { silent?: boolean } = {},
): Promise<{ socket: Socket; server: string; queries: string[] }> {
  const socket = createSocket('udp4')
  const queries: string[] = []
  socket.on('message', (msg, rinfo) => {
    queries.push(msg.toString('latin1'))
    if (!opts.silent) socket.send(answerQuery(msg, zone), rinfo.port, rinfo.address)
  })
  socket.bind(0, '127.0.0.1')
  await once(socket, 'listening')
  return { socket, server: `127.0.0.1:${socket.address().port}`, queries }
}
