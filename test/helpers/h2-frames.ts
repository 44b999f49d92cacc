// HTTP/2 written frame by frame (RFC 9113 §4.1, HPACK literals of RFC 7541 §6.2.2), for the tests that must
// send what node:http2 refuses to: a second `host`, a reset right behind a request, a `:status` of 600.

import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import { eventually } from './eventually.ts'

/** what a prior-knowledge h2c client sends first */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7 } as const
export const FLAG = { END_STREAM: 1, ACK: 1, END_HEADERS: 4, PADDED: 8 } as const

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

/** a frame as a scripted server reads it: its header, the payload left out */
export interface ClientFrame {
  type: number
  flags: number
  streamId: number
}

/**
 * The server side of a prior-knowledge h2c connection, frame by frame, for an upstream that must send what
 * node:http2 refuses to: sends an empty SETTINGS, skips the client's preface, and hands each whole frame the
 * client sends to `onFrame`, in order, a SETTINGS once it is acknowledged. `acknowledgeSettings: false`: the
 * client's SETTINGS are never acknowledged, so that they are never in force.
 */
export function serveClientFrames(
  socket: Socket,
  onFrame: (frame: ClientFrame) => void,
  { acknowledgeSettings = true }: { acknowledgeSettings?: boolean } = {},
): void {
  // a scripted peer is often one the proxy resets or cuts off: that is no failure of the test's
  socket.on('error', () => {})
  let buffered = Buffer.alloc(0)
  let prefaceSeen = false
  socket.write(frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)))
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk])
    if (!prefaceSeen) {
      if (buffered.length < PREFACE.length) return
      buffered = buffered.subarray(PREFACE.length)
      prefaceSeen = true
    }
    while (buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3)
      if (buffered.length < 9 + length) return
      const read = {
        type: buffered[3]!,
        flags: buffered[4]!,
        streamId: buffered.readUInt32BE(5) & 0x7fffffff,
      }
      buffered = buffered.subarray(9 + length)
      if (read.type === FRAME.SETTINGS && !(read.flags & FLAG.ACK) && acknowledgeSettings)
        socket.write(frame(FRAME.SETTINGS, FLAG.ACK, 0, Buffer.alloc(0)))
      onFrame(read)
    }
  })
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

/** the Huffman codes of the digits (RFC 7541 Appendix B), by their bit strings */
const HUFFMAN_DIGITS: Readonly<Record<string, string>> = {
  '00000': '0',
  '00001': '1',
  '00010': '2',
  '011001': '3',
  '011010': '4',
  '011011': '5',
  '011100': '6',
  '011101': '7',
  '011110': '8',
  '011111': '9',
}

/**
 * The `:status` a response's header block starts with, as a server that has sent nothing before on its
 * connection encodes it (RFC 7541): an entry of the static table, or a literal of the name `:status` (static
 * index 8), with or without indexing, its digits raw or Huffman-coded. undefined for anything else.
 */
export function responseStatus(block: Buffer): number | undefined {
  const first = block[0]
  if (first === undefined) return undefined
  if (first & 0x80) return STATIC_STATUS[first & 0x7f]
  // literal with incremental indexing (01xxxxxx), without indexing (0000xxxx) or never indexed (0001xxxx)
  const nameIndex = (first & 0xc0) === 0x40 ? first & 0x3f : first & 0x0f
  if (nameIndex !== 8) return undefined
  const length = block[1]! & 0x7f
  const value = block.subarray(2, 2 + length)
  if ((block[1]! & 0x80) === 0) return Number(value.toString('latin1'))
  let bits = ''
  for (const byte of value) bits += byte.toString(2).padStart(8, '0')
  let digits = ''
  let code = ''
  for (const bit of bits) {
    code += bit
    const digit = HUFFMAN_DIGITS[code]
    if (digit === undefined) continue
    digits += digit
    code = ''
  }
  // what is left is the EOS prefix padding the last byte: ones only
  return /^1*$/.test(code) && digits.length === 3 ? Number(digits) : undefined
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
  return (await streamAnswers(port, frames, [1], opts)).get(1)!
}

/**
 * As stream1Answer, for each of `streams`: resolves once every one of them is answered, with what answered
 * each. `localAddress`: the loopback address the connection comes from.
 */
export async function streamAnswers(
  port: number,
  frames: readonly Buffer[],
  streams: readonly number[],
  opts: { what?: string; timeoutMs?: number; localAddress?: string } = {},
): Promise<Map<number, string>> {
  const { localAddress } = opts
  const socket = connect({ port, host: '127.0.0.1', ...(localAddress === undefined ? {} : { localAddress }) })
  await once(socket, 'connect')
  socket.on('error', () => {})
  let buf = Buffer.alloc(0)
  socket.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c])
  })
  socket.write(Buffer.concat(frames))
  const answers = new Map<number, string>()
  const wanted = new Set(streams)
  let at = 0
  try {
    return await eventually(
      () => {
        while (at + 9 <= buf.length) {
          const length = buf.readUIntBE(at, 3)
          if (at + 9 + length > buf.length) break
          const type = buf[at + 3]
          const id = buf.readUInt32BE(at + 5) & 0x7fffffff
          if (wanted.has(id) && !answers.has(id)) {
            if (type === FRAME.RST_STREAM) answers.set(id, `reset ${buf.readUInt32BE(at + 9)}`)
            if (type === FRAME.HEADERS) {
              const first = buf[at + 9]!
              answers.set(id, `status ${first & 0x80 ? (STATIC_STATUS[first & 0x7f] ?? '?') : '?'}`)
            }
          }
          at += 9 + length
        }
        return answers.size === wanted.size ? answers : undefined
      },
      {
        timeoutMs: opts.timeoutMs ?? 5000,
        what: opts.what ?? `the answers on streams ${streams.join(', ')}`,
      },
    )
  } finally {
    socket.destroy()
  }
}
