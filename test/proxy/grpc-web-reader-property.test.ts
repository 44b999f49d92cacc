// The gRPC-Web status reader against a plain decoder of the whole body, generated: 0–5 data frames of any
// size (empty ones, compressed ones), then a trailer frame (flag 0x80) whose header block has `grpc-status`
// in any letter case, with any OWS, CRLF or LF lines, other trailers before and after it (some named almost
// like it, some holding its text), a status 0–16, past it, or not a number, and sizes around 8 KiB (what the
// reader once kept of a block: it now reads one of any size); or no trailer frame, or a body cut short; with bytes or another trailer frame after it. The
// body is binary (`application/grpc-web`) or base64 (`-text`): encoded whole, frame by frame, or in chunks
// each padded alone, as gRPC-Web servers flush, with whitespace anywhere or none. It reaches `push()` split at
// random bytes, or a byte at a time. The reader must find the status the decoder finds, answer `result()` as
// the client reads the call, and stand where the body stands (`position()`).
//
// A share of the trailer frames is compressed (flag 0x81), in the `grpc-encoding` of the response (gzip,
// deflate, br) or in another one, or none named: valid, cut short, a byte changed, or not compressed data at
// all, and some sized at the reader's bounds (a frame of 64 KiB and a few bytes either side, a block inflating
// to 1 MiB and a few bytes either side). A client inflates it and reads its status; beyond the bounds, or when
// it does not inflate, the reader counts the status as missing.
//
// The decoder reads the body after the fact: base64 four characters at a time (each group alone, whitespace
// dropped), frames one after the other, the first trailer frame's block as lines of `name: value`, and
// `grpc-status` as gRPC's grammar has it (1*DIGIT): 0–16 is that status, any other value UNKNOWN, as a client
// reads it, whatever the trailer frame's size (docs/reference.md, "HTTP/2 and gRPC"). A compressed block is
// inflated whole, without a bound, and then held to the documented ones.
import {
  brotliCompressSync,
  brotliDecompressSync,
  constants,
  deflateSync,
  gunzipSync,
  gzipSync,
  inflateSync,
} from 'node:zlib'
import fc from 'fast-check'
import t from 'tap'
import { grpcWebResponse } from '../../src/proxy/grpc-web.ts'
import { checkBothSides, checkProperty } from '../helpers/property.ts'

/** the size generated blocks are spread around */
const BLOCK_SIZE = 8 * 1024
const UNKNOWN = 2
/** a compressed trailer frame is read when its payload is at most this long… */
const MAX_COMPRESSED_TRAILER = 64 * 1024
/** …and it inflates to at most this (docs/reference.md, "HTTP/2 and gRPC") */
const MAX_INFLATED_TRAILER = 1024 * 1024

// ---- the reference -----------------------------------------------------------------------------------------

/** a `grpc-status` value as a client reads it */
function statusValue(value: string): number {
  const v = value.replace(/^[\t ]+|[\t ]+$/g, '')
  if (!/^[0-9]+$/.test(v)) return UNKNOWN
  const n = Number(v)
  return n <= 16 ? n : UNKNOWN
}

/** gRPC's HTTP-to-status mapping for a response without a status, and INTERNAL for a 200 (docs/reference.md) */
function withoutStatus(http: number): number {
  const mapped: Record<number, number> = {
    200: 13,
    400: 13,
    401: 16,
    403: 7,
    404: 12,
    429: 14,
    502: 14,
    503: 14,
    504: 14,
  }
  return mapped[http] ?? UNKNOWN
}

function blockStatus(block: string): number | undefined {
  for (const line of block.split(/\r?\n/)) {
    const colon = line.indexOf(':')
    if (colon !== -1 && line.slice(0, colon).toLowerCase() === 'grpc-status')
      return statusValue(line.slice(colon + 1))
  }
  return undefined
}

interface Read {
  status: number | undefined
  position: 'between' | 'ended' | 'inside'
}

const INFLATE: Record<string, (bytes: Buffer) => Buffer> = {
  gzip: gunzipSync,
  deflate: inflateSync,
  br: brotliDecompressSync,
}

/** a compressed trailer frame's block as a client inflates it; undefined where the reader reads no status */
function inflated(payload: Buffer, encoding: string | undefined): string | undefined {
  const inflate = encoding === undefined ? undefined : INFLATE[encoding]
  if (inflate === undefined || payload.length > MAX_COMPRESSED_TRAILER) return undefined
  let block: Buffer
  try {
    block = inflate(payload)
  } catch {
    return undefined
  }
  return block.length > MAX_INFLATED_TRAILER ? undefined : block.toString('latin1')
}

function referenceRead(body: Buffer, text: boolean, encoding: string | undefined): Read {
  let bytes = body
  let partialGroup = false
  if (text) {
    const chars = body.toString('latin1').replace(/[\t\n\r ]/g, '')
    const groups: Buffer[] = []
    for (let g = 0; g + 4 <= chars.length; g += 4) groups.push(Buffer.from(chars.slice(g, g + 4), 'base64'))
    bytes = Buffer.concat(groups)
    partialGroup = chars.length % 4 !== 0
  }
  let i = 0
  for (;;) {
    if (i === bytes.length) return { status: undefined, position: partialGroup ? 'inside' : 'between' }
    if (bytes.length - i < 5) return { status: undefined, position: 'inside' }
    const length = bytes.readUInt32BE(i + 1)
    if (i + 5 + length > bytes.length) return { status: undefined, position: 'inside' }
    if ((bytes[i]! & 0x80) !== 0) {
      const payload = bytes.subarray(i + 5, i + 5 + length)
      const block = (bytes[i]! & 0x01) === 0 ? payload.toString('latin1') : inflated(payload, encoding)
      return { status: block === undefined ? undefined : blockStatus(block), position: 'ended' }
    }
    i += 5 + length
  }
}

// ---- the generator -----------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))
/** `arbitrary` in one case in `every`, else undefined */
const sometimes = <T>(arbitrary: fc.Arbitrary<T>, every: number) =>
  fc.oneof({ arbitrary: fc.constant(undefined), weight: every - 1 }, { arbitrary, weight: 1 })

function frame(flag: number, payload: Uint8Array): Buffer {
  const head = Buffer.alloc(5)
  head[0] = flag
  head.writeUInt32BE(payload.length, 1)
  return Buffer.concat([head, payload])
}

/** a payload: short and random, or long and full of 0x80, a trailer frame's flag */
const payload = fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 40 }), weight: 8 },
  { arbitrary: fc.integer({ min: 100, max: 5000 }).map((n) => new Uint8Array(n).fill(0x80)), weight: 1 },
)
const dataFrame = fc.tuple(weighted([0, 3], [1, 1]), payload).map(([flag, p]) => frame(flag, p))

const statusText = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 16 }).map(String), weight: 6 },
  { arbitrary: fc.integer({ min: 0, max: 16 }).map((n) => `00${n}`), weight: 1 },
  { arbitrary: fc.integer({ min: 17, max: 999 }).map(String), weight: 1 },
  { arbitrary: fc.integer({ min: 1000, max: 10 ** 9 }).map(String), weight: 1 },
  {
    arbitrary: fc.constantFrom('', '-1', 'abc', 'OK', '1e1', '0x1', '3.0', '+3', '3 4', '\u0663'),
    weight: 2,
  },
)
const ows = weighted(['', 4], [' ', 4], ['\t', 1], ['  ', 1])
const eol = weighted(['\r\n', 3], ['\n', 1])
const flips = fc.array(fc.boolean(), { minLength: 1, maxLength: 11 })
const spell = (name: string, flip: boolean[]) =>
  [...name].map((c, i) => (flip[i % flip.length] ? c.toUpperCase() : c.toLowerCase())).join('')

const valueChar = fc.oneof(
  fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  fc.constantFrom('\t', '\u00e9', '\u00ff'),
)
const otherValue = fc.oneof(
  fc.array(valueChar, { maxLength: 20 }).map((cs) => cs.join('')),
  fc.constantFrom('grpc-status: 5', ' grpc-status:4', 'x\tgrpc-status: 9'),
)
const otherTrailer = fc
  .tuple(
    fc.constantFrom(
      'grpc-message',
      'grpc-status-details-bin',
      'x-grpc-status',
      'grpc-statuses',
      'x-note',
      'grpc-status-x',
    ),
    ows,
    otherValue,
    eol,
  )
  .map(([name, space, value, end]) => `${name}:${space}${value}${end}`)

/** the trailer block, and where its size stands against 8 KiB (a filler trailer takes it there) */
const trailerBlock = fc
  .record({
    before: fc.array(otherTrailer, { maxLength: 3 }),
    status: fc.option(fc.tuple(flips, ows, statusText, ows, eol), { freq: 8, nil: undefined }),
    after: fc.array(otherTrailer, { maxLength: 3 }),
    lastEol: fc.boolean(),
    // a block of 8 KiB and a few bytes either side
    near: sometimes(fc.tuple(fc.integer({ min: -3, max: 3 }), fc.boolean(), eol), 8),
  })
  .map(({ before, status, after, lastEol, near }) => {
    const lines = [...before]
    if (status) {
      const [flip, space, value, trailing, end] = status
      lines.push(`${spell('grpc-status', flip)}:${space}${value}${trailing}${end}`)
    }
    lines.push(...after)
    let block = lines.join('')
    if (!lastEol) block = block.replace(/\r?\n$/, '')
    if (near) {
      const [delta, first, end] = near
      const prefix = 'x-pad: '
      const pad = Math.max(0, BLOCK_SIZE + delta - block.length - prefix.length - end.length)
      const filler = `${prefix}${'p'.repeat(pad)}${end}`
      block = first ? filler + block : `${block}${block === '' || /\n$/.test(block) ? '' : end}${filler}`
    }
    return Buffer.from(block, 'latin1')
  })

const ENCODINGS = ['gzip', 'deflate', 'br'] as const
type Encoding = (typeof ENCODINGS)[number]

function compress(block: Buffer, encoding: Encoding, level: number): Buffer {
  if (encoding === 'gzip') return gzipSync(block, { level })
  if (encoding === 'deflate') return deflateSync(block, { level })
  return brotliCompressSync(block, { params: { [constants.BROTLI_PARAM_QUALITY]: level } })
}

/** `block` with a filler trailer after it that takes it to `size` bytes */
function padded(block: Buffer, size: number): Buffer {
  const line = Buffer.from(`${block.length === 0 || block.at(-1) === 0x0a ? '' : '\r\n'}x-pad: `, 'latin1')
  const fill = Math.max(0, size - block.length - line.length - 2)
  return Buffer.concat([block, line, Buffer.alloc(fill, 'p'), Buffer.from('\r\n')])
}

/**
 * `block` compressed so that the payload is `size` bytes long, or as near as stored (uncompressed) deflate
 * blocks, whose overhead is fixed, get it
 */
function compressedTo(block: Buffer, encoding: 'gzip' | 'deflate', size: number): Buffer {
  let padTo = size
  let out = compress(padded(block, padTo), encoding, 0)
  for (let tries = 0; tries < 3 && out.length !== size; tries++) {
    padTo += size - out.length
    out = compress(padded(block, padTo), encoding, 0)
  }
  return out
}

/** a compressed trailer frame as servers send one, or broken, and the `grpc-encoding` the response names */
const compressedTrailer = fc
  .record({
    block: trailerBlock,
    encoding: weighted<Encoding>(['gzip', 3], ['deflate', 3], ['br', 1]),
    level: fc.constantFrom(0, 1, 6, 9),
    named: weighted(['same', 10], ['other', 1], ['unknown', 1], ['none', 1]),
    damage: weighted(['none', 10], ['cut', 2], ['flip', 2], ['garbage', 1]),
    at: fc.nat(),
    flip: fc.integer({ min: 1, max: 255 }),
    garbage: fc.uint8Array({ maxLength: 40 }),
    // sized at the reader's bounds: the payload around 64 KiB, the block around 1 MiB
    bound: sometimes(fc.tuple(fc.constantFrom('payload', 'block'), fc.integer({ min: -2, max: 2 })), 6),
  })
  .map(({ block, encoding, level, named, damage, at, flip, garbage, bound }) => {
    let payload: Buffer
    if (bound?.[0] === 'payload') {
      const stored = encoding === 'br' ? 'gzip' : encoding
      encoding = stored
      payload = compressedTo(block, stored, MAX_COMPRESSED_TRAILER + bound[1])
    } else {
      const whole = bound === undefined ? block : padded(block, MAX_INFLATED_TRAILER + bound[1])
      payload = compress(whole, encoding, bound === undefined ? level : 6)
    }
    if (damage === 'cut') payload = payload.subarray(0, at % payload.length)
    else if (damage === 'flip') {
      payload = Buffer.from(payload)
      const i = at % payload.length
      payload[i] = payload[i]! ^ flip
    } else if (damage === 'garbage') payload = Buffer.from(garbage)
    const header =
      named === 'same'
        ? encoding
        : named === 'other'
          ? ENCODINGS[(ENCODINGS.indexOf(encoding) + 1 + (at % 2)) % 3]
          : named === 'unknown'
            ? 'snappy'
            : undefined
    return { frame: frame(0x81, payload), encoding: header }
  })

/** the trailer frame: plain (in a response that may name an encoding all the same), or compressed */
const trailerFrame = fc.oneof(
  {
    arbitrary: fc
      .tuple(trailerBlock, sometimes(fc.constantFrom(...ENCODINGS), 4))
      .map(([block, encoding]) => ({ frame: frame(0x80, block), encoding })),
    weight: 3,
  },
  { arbitrary: compressedTrailer, weight: 1 },
)

/** what follows the trailer frame: nothing, bytes, another trailer frame, a data frame */
const afterTrailer = fc.oneof(
  { arbitrary: fc.constant(Buffer.alloc(0)), weight: 4 },
  { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 10 }).map((b) => Buffer.from(b)), weight: 1 },
  { arbitrary: fc.constant(frame(0x80, Buffer.from('grpc-status: 5\r\n'))), weight: 1 },
  { arbitrary: fc.constant(frame(0, Buffer.from('late'))), weight: 1 },
)

/**
 * the body's parts (frames, and what follows): complete, without a trailer frame, or cut short; and the
 * response's `grpc-encoding`
 */
const bodyParts = fc
  .tuple(
    fc.array(dataFrame, { maxLength: 5 }),
    trailerFrame,
    afterTrailer,
    weighted(['whole', 8], ['no trailer', 1], ['cut', 2]),
    fc.nat(),
  )
  .map(([data, trailer, after, shape, cutAt]) => {
    const encoding = trailer.encoding
    if (shape === 'no trailer') return { parts: data, encoding }
    const parts = [...data, trailer.frame, after]
    if (shape === 'whole') return { parts, encoding }
    // cut anywhere before the end of the trailer frame
    const body = Buffer.concat(parts.slice(0, -1))
    return { parts: [body.subarray(0, cutAt % Math.max(1, body.length))], encoding }
  })

/** the bytes split at positions drawn from `cuts` (a piece may be empty: push() gets empty chunks too) */
function pieces(bytes: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
  const out: Buffer[] = []
  let start = 0
  for (const end of [...at, bytes.length]) {
    out.push(bytes.subarray(start, end))
    start = end
  }
  return out
}

const whitespace = fc.constantFrom('\r\n', '\n', ' ', '\t')

/** a body as sent: binary, or base64 whole, frame by frame, or chunk by chunk, with whitespace or none */
const encodedBody = fc
  .tuple(
    bodyParts,
    fc.boolean(),
    weighted(['whole', 1], ['per frame', 1], ['per chunk', 1]),
    fc.array(fc.nat(), { maxLength: 6 }),
    fc.array(fc.tuple(fc.nat(), whitespace), { maxLength: 4 }),
    // the last base64 group left unfinished (1–3 characters short), in one case in eight
    weighted([0, 21], [1, 1], [2, 1], [3, 1]),
  )
  .map(([{ parts, encoding }, text, base64, chunkCuts, spaces, short]) => {
    const body = Buffer.concat(parts)
    if (!text) return { text, body, encoding }
    const runs = base64 === 'whole' ? [body] : base64 === 'per frame' ? parts : pieces(body, chunkCuts)
    let chars = runs.map((run) => run.toString('base64')).join('')
    chars = chars.slice(0, Math.max(0, chars.length - short))
    for (const [at, space] of spaces) {
      const i = at % (chars.length + 1)
      chars = chars.slice(0, i) + space + chars.slice(i)
    }
    return { text, body: Buffer.from(chars, 'latin1'), encoding }
  })

const contentType = (text: boolean, suffix: string) => `application/grpc-web${text ? '-text' : ''}${suffix}`

const call = fc.record({
  body: encodedBody,
  suffix: fc.constantFrom('', '+proto', '+json'),
  // a status in the response's header section: a trailers-only answer
  headerStatus: sometimes(statusText, 8),
  http: fc.constantFrom(200, 200, 200, 400, 401, 403, 404, 429, 500, 502, 503, 504),
  byteByByte: fc.boolean(),
  cuts: fc.array(fc.nat(), { maxLength: 8 }),
})

t.test('the status the reader finds is the one the whole body holds, however it arrives', async (t) => {
  checkProperty(
    t,
    'status, result() and position() agree with a decoder of the whole body',
    fc.property(call, ({ body: { text, body, encoding }, suffix, headerStatus, http, byteByByte, cuts }) => {
      const response = ['Content-Type', contentType(text, suffix)]
      if (headerStatus !== undefined) response.push('grpc-status', headerStatus)
      if (encoding !== undefined) response.push('Grpc-Encoding', encoding)
      const reader = grpcWebResponse({ 'content-type': 'application/grpc-web+proto' }, response)!
      const chunks = byteByByte && body.length <= 2048 ? pieces(body, [...body.keys()]) : pieces(body, cuts)
      for (const chunk of chunks) reader.push(chunk)
      const want = referenceRead(body, text, encoding)
      const header = headerStatus === undefined ? undefined : statusValue(headerStatus)
      return (
        reader.base64 === text &&
        reader.status === want.status &&
        reader.result(http) === (header ?? want.status ?? withoutStatus(http)) &&
        reader.position() === (header === undefined ? want.position : 'ended')
      )
    }),
    3000,
  )
})

t.test(
  'the generated compressed trailer frames reach both sides of the bounds and of inflating',
  async (t) => {
    const sample = checkBothSides(
      t,
      compressedTrailer,
      ({ frame, encoding }) => inflated(frame.subarray(5), encoding) !== undefined,
      [700, 1300],
      'compressed trailer frames a client inflates',
    )
    const sizes = (
      what: (payload: Buffer, encoding: string | undefined) => number | undefined,
      limit: number,
    ) => {
      const seen = new Set<number>()
      for (const { frame, encoding } of sample) {
        const size = what(frame.subarray(5), encoding)
        if (size !== undefined && Math.abs(size - limit) <= 2) seen.add(size - limit)
      }
      return [...seen].sort((a, b) => a - b)
    }
    t.same(
      sizes((payload) => payload.length, MAX_COMPRESSED_TRAILER),
      [-2, -1, 0, 1, 2],
      'payloads of 64 KiB and up to two bytes either side',
    )
    t.same(
      sizes((payload, encoding) => {
        try {
          return encoding === undefined ? undefined : INFLATE[encoding]?.(payload).length
        } catch {
          return undefined
        }
      }, MAX_INFLATED_TRAILER),
      [-2, -1, 0, 1, 2],
      'blocks of 1 MiB and up to two bytes either side',
    )
  },
)
