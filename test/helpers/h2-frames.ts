// HTTP/2 written frame by frame (RFC 9113 §4.1, HPACK literals of RFC 7541 §6.2.2), for the tests that must
// send what node:http2 refuses to: a second `host`, a reset right behind a request, a `:status` of 600.

import { once } from 'node:events'
import { connect } from 'node:net'
import { eventually } from './eventually.ts'

/** what a prior-knowledge h2c client sends first */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7 } as const
export const FLAG = { END_STREAM: 1, ACK: 1, END_HEADERS: 4 } as const

/** one frame: the 9-byte header, then the payload */
export function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9)
  head.writeUIntBE(payload.length, 0, 3)
  head[3] = type
  head[4] = flags
  head.writeUInt32BE(streamId, 5)
  return Buffer.concat([head, payload])
}

/** an HPACK integer with an N-bit prefix (RFC 7541 §5.1) */
function hpackInt(value: number, prefixBits: number): Buffer {
  const max = (1 << prefixBits) - 1
  if (value < max) return Buffer.from([value])
  const out = [max]
  let rest = value - max
  while (rest >= 128) {
    out.push((rest & 127) | 128)
    rest >>= 7
  }
  out.push(rest)
  return Buffer.from(out)
}

/** an HPACK string literal, not Huffman-coded */
export function hpackString(s: string): Buffer {
  return Buffer.concat([hpackInt(s.length, 7), Buffer.from(s, 'latin1')])
}

/** a header block of literal fields without indexing: any name and value, as given */
export function headerBlock(fields: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(
    fields.flatMap(([name, value]) => [Buffer.from([0]), hpackString(name), hpackString(value)]),
  )
}

/** the error code of the first GOAWAY frame in what the server sent, if any */
export function goawayCode(received: Buffer): number | undefined {
  for (let at = 0; at + 9 <= received.length; ) {
    const length = received.readUIntBE(at, 3)
    if (received[at + 3] === FRAME.GOAWAY && at + 9 + 8 <= received.length)
      return received.readUInt32BE(at + 9 + 4)
    at += 9 + length
  }
  return undefined
}

/** :status values of HPACK's static table (RFC 7541 Appendix A), by index */
const STATIC_STATUS: Readonly<Record<number, number>> = {
  8: 200,
  9: 204,
  10: 206,
  11: 304,
  12: 400,
  13: 404,
  14: 500,
}

/**
 * Writes `frames` on a new connection to 127.0.0.1:`port` and resolves with what answered stream 1: `status N`
 * from the response HEADERS (N one of the static table's statuses, else `?`), or `reset N` with the
 * RST_STREAM error code.
 */
export async function stream1Answer(
  port: number,
  frames: readonly Buffer[],
  opts: { what?: string; timeoutMs?: number } = {},
): Promise<string> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.on('error', () => {})
  let buf = Buffer.alloc(0)
  socket.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c])
  })
  socket.write(Buffer.concat(frames))
  try {
    return await eventually(
      () => {
        for (let at = 0; at + 9 <= buf.length; ) {
          const length = buf.readUIntBE(at, 3)
          if (at + 9 + length > buf.length) break
          const type = buf[at + 3]
          if ((buf.readUInt32BE(at + 5) & 0x7fffffff) === 1) {
            if (type === FRAME.RST_STREAM) return `reset ${buf.readUInt32BE(at + 9)}`
            if (type === FRAME.HEADERS) {
              const first = buf[at + 9]!
              return `status ${first & 0x80 ? (STATIC_STATUS[first & 0x7f] ?? '?') : '?'}`
            }
          }
          at += 9 + length
        }
        return undefined
      },
      { timeoutMs: opts.timeoutMs ?? 5000, what: opts.what ?? 'the answer on stream 1' },
    )
  } finally {
    socket.destroy()
  }
}
