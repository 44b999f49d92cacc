// gRPC-Web (browsers' gRPC, `application/grpc-web*`): the call's status travels in the response body, not in
// HTTP trailers, as a last frame whose flag byte has its high bit set and whose payload is the trailer block
// (`grpc-status: 0\r\ngrpc-message: …\r\n`). Every frame is length-prefixed (flag byte, 4-byte big-endian
// length); `application/grpc-web-text` base64-encodes the frames. The proxy passes the body on untouched and
// reads it on the way to find that status, so a gRPC-Web call is counted by the status its client reads.
import type { IncomingHttpHeaders, ServerResponse } from 'node:http'
import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib'
import { GRPC, grpcMessage, grpcStatusWithoutOne } from './grpc.ts'

export function isGrpcWeb(headers: IncomingHttpHeaders): boolean {
  const ct = headers['content-type']
  return typeof ct === 'string' && ct.startsWith('application/grpc-web')
}

/** the response body is base64 (`application/grpc-web-text`), by the response's content type */
export function isGrpcWebText(contentType: unknown): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc-web-text')
}

/** the response is a gRPC-Web one, by its content type (an error page is not: nothing is appended to it) */
export function isGrpcWebType(contentType: unknown): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc-web')
}

// gRPC's grammar is 1*DIGIT: Number() would read "" as 0 (OK), and "1e1", "+3" or "0x1" as statuses
const STATUS_VALUE = /^[\t ]*([0-9]+)[\t ]*$/

/** `grpc-status` as a client reads it: 0–16, anything else (past 16, empty, not digits) UNKNOWN */
export function grpcStatusValue(value: string): number {
  const digits = STATUS_VALUE.exec(value)?.[1]
  const n = digits === undefined ? Number.NaN : Number(digits)
  return n <= 16 ? n : GRPC.UNKNOWN
}

/**
 * For a gRPC-Web call (by the request's content type), a reader of its HTTP/1.1 response, whose header fields
 * come as [name, value, …]; undefined for any other request.
 */
export function grpcWebResponse(
  request: IncomingHttpHeaders,
  response: readonly string[],
): GrpcWebStatusReader | undefined {
  if (!isGrpcWeb(request)) return undefined
  let text = false
  let web = false
  let status: number | undefined
  let encoding: string | undefined
  for (let i = 0; i + 1 < response.length; i += 2) {
    const name = response[i]!.toLowerCase()
    if (name === 'content-type') {
      text = isGrpcWebText(response[i + 1])
      web = isGrpcWebType(response[i + 1])
    } else if (name === 'grpc-status') status = grpcStatusValue(response[i + 1]!)
    else if (name === 'grpc-encoding') encoding = response[i + 1]
  }
  return new GrpcWebStatusReader(text, status, web, encoding)
}

/** `grpc-status:`, the start of the status line of a trailer block, its name in lower case */
const STATUS_NAME = Buffer.from('grpc-status:', 'latin1')
// where the status line's value stands: optional whitespace before the digits, the digits, optional whitespace
// after them, or anything else (a value that is no status, which a client reads as UNKNOWN)
const LEADING = 0
const DIGITS = 1
const TRAILING = 2
const INVALID = 3

/**
 * The first `grpc-status` line of a trailer block, read as the block streams by, whatever its size (a client
 * reads a trailer block of any size, and trailers with large values make one): what is kept of the block is
 * how far the current line matched `grpc-status:`, then the state of its value. Lines end with LF, a CR
 * before it dropped; the value is gRPC's grammar, OWS 1*DIGIT OWS (grpcStatusValue).
 */
class StatusLineReader {
  status: number | undefined
  /** bytes of the current line that matched STATUS_NAME; -1 once the line is another field */
  private matched = 0
  private value = LEADING
  /** the digits read, 17 (past any status) once more than 16 */
  private n = 0
  /** the last byte was a CR: the line's end when LF follows, part of the value otherwise */
  private cr = false

  push(bytes: Buffer, from: number, to: number): void {
    for (let i = from; i < to && this.status === undefined; i++) {
      const b = bytes[i]!
      if (b === 0x0a) {
        this.lineEnded()
      } else if (this.matched === -1) {
        // another field: on to the end of its line
        const lf = bytes.indexOf(0x0a, i)
        if (lf === -1 || lf >= to) return
        i = lf - 1
      } else if (this.matched < STATUS_NAME.length) {
        const lower = b >= 0x41 && b <= 0x5a ? b + 32 : b
        this.matched = lower === STATUS_NAME[this.matched] ? this.matched + 1 : -1
      } else this.valueByte(b)
    }
  }

  /** the block ended: a line it ended without LF is read all the same */
  end(): void {
    if (this.status !== undefined) return
    if (this.cr) this.value = INVALID
    this.lineEnded()
  }

  private valueByte(b: number): void {
    if (this.cr) {
      this.cr = false
      this.value = INVALID
    }
    if (b === 0x0d) this.cr = true
    else if (b === 0x20 || b === 0x09) {
      if (this.value === DIGITS) this.value = TRAILING
    } else if (b >= 0x30 && b <= 0x39 && (this.value === LEADING || this.value === DIGITS)) {
      this.value = DIGITS
      this.n = Math.min(this.n * 10 + (b - 0x30), 17)
    } else this.value = INVALID
  }

  private lineEnded(): void {
    if (this.matched === STATUS_NAME.length) {
      const digits = this.value === DIGITS || this.value === TRAILING
      this.status = digits && this.n <= 16 ? this.n : GRPC.UNKNOWN
    }
    this.matched = 0
    this.value = LEADING
    this.n = 0
    this.cr = false
  }
}

/** a compressed trailer frame larger than this is not read: its status then counts as missing */
const MAX_COMPRESSED_TRAILER = 64 * 1024
/** nor one that inflates to more than this */
const MAX_INFLATED_TRAILER = 1024 * 1024

/** a compressed trailer block in the response's `grpc-encoding`, inflated; undefined when it cannot be */
function inflateTrailer(block: Buffer, encoding: string | undefined): Buffer | undefined {
  const bound = { maxOutputLength: MAX_INFLATED_TRAILER }
  try {
    if (encoding === 'gzip') return gunzipSync(block, bound)
    if (encoding === 'deflate') return inflateSync(block, bound)
    if (encoding === 'br') return brotliDecompressSync(block, bound)
  } catch {
    // not what the encoding says, or too large: no status read
  }
  return undefined
}

/**
 * Reads a gRPC-Web response body as it streams by, keeping nothing but the frame header being read and where
 * the trailer frame's status line stands (a compressed trailer frame, flag 0x81, which servers send for a
 * large trailer block in the response's `grpc-encoding`, is kept whole, bounded, and inflated at its end). `status` is set once a complete trailer frame carrying
 * `grpc-status` went by.
 */
export class GrpcWebStatusReader {
  status: number | undefined
  /** bytes of the current frame's header seen (0–5), then its payload still to come */
  private header = Buffer.alloc(5)
  private headerSeen = 0
  private remaining = 0
  /** the trailer frame's block being read */
  private trailer: StatusLineReader | undefined
  /** a compressed trailer frame's bytes, until it ends; undefined past MAX_COMPRESSED_TRAILER */
  private compressed: Buffer[] | undefined
  private compressedBytes = 0
  /** text mode: base64 characters left over from the last chunk (fewer than 4) */
  private pendingText = ''
  private done = false

  /**
   * @param text the response is `application/grpc-web-text` (base64)
   * @param headerStatus `grpc-status` of the response's header section (a trailers-only answer)
   * @param web the response is in a gRPC-Web content type (its body is frames)
   * @param encoding the response's `grpc-encoding`, which a compressed trailer frame is in
   */
  constructor(
    private readonly text: boolean,
    private readonly headerStatus?: number,
    private readonly web = true,
    private readonly encoding?: string,
  ) {}

  /** the status the client reads once the response ended: the header section's, the trailer frame's, else gRPC's HTTP mapping */
  result(httpStatus: number): number {
    return this.headerStatus ?? this.status ?? grpcStatusWithoutOne(httpStatus)
  }

  /**
   * Where the body as sent so far stands for a status the proxy adds at its end: 'between' frames (a
   * trailer frame may follow), 'ended' (its trailer frame went by: the client has its status), or 'inside'
   * a frame, or a base64 group, that will not be completed (nothing appended would be read as a frame).
   */
  position(): 'between' | 'ended' | 'inside' {
    if (!this.web) return 'inside'
    if (this.done || this.headerStatus !== undefined) return 'ended'
    return this.headerSeen === 0 && this.remaining === 0 && this.pendingText === '' ? 'between' : 'inside'
  }

  /** the response is `application/grpc-web-text`: a frame the proxy adds is base64 */
  get base64(): boolean {
    return this.text
  }

  /** one chunk of the response body, as sent to the client */
  push(chunk: Buffer): void {
    if (this.done) return
    if (!this.text) {
      this.frames(chunk)
      return
    }
    // base64 decodes in groups of four characters; a group split across chunks waits for its rest. Whitespace
    // is not part of the encoding: the frames may also be base64-encoded one by one, each group padded alone.
    const chars = this.pendingText + chunk.toString('latin1').replace(/[\t\n\r ]/g, '')
    const whole = chars.length - (chars.length % 4)
    this.pendingText = chars.slice(whole)
    if (whole > 0) this.frames(decodeGroups(chars.slice(0, whole)))
  }

  private frames(bytes: Buffer): void {
    let i = 0
    while (i < bytes.length && !this.done) {
      if (this.remaining === 0 && this.headerSeen < 5) {
        const take = Math.min(5 - this.headerSeen, bytes.length - i)
        bytes.copy(this.header, this.headerSeen, i, i + take)
        this.headerSeen += take
        i += take
        if (this.headerSeen < 5) return
        this.remaining = this.header.readUInt32BE(1)
        const isTrailer = (this.header[0]! & 0x80) !== 0
        this.trailer = isTrailer ? new StatusLineReader() : undefined
        const compressed = isTrailer && (this.header[0]! & 0x01) !== 0
        this.compressed = compressed && this.remaining <= MAX_COMPRESSED_TRAILER ? [] : undefined
        this.compressedBytes = 0
        // a compressed block is read once inflated, or not at all
        if (compressed) this.trailer = undefined
        if (this.remaining === 0) this.frameEnded(isTrailer)
        continue
      }
      const take = Math.min(this.remaining, bytes.length - i)
      this.trailer?.push(bytes, i, i + take)
      if (this.compressed) {
        this.compressed.push(bytes.subarray(i, i + take))
        this.compressedBytes += take
      }
      this.remaining -= take
      i += take
      if (this.remaining === 0) this.frameEnded((this.header[0]! & 0x80) !== 0)
    }
  }

  private frameEnded(isTrailer: boolean): void {
    this.headerSeen = 0
    if (!isTrailer) return
    // the trailer frame is the last one: whatever follows is not the client's concern here
    this.done = true
    if (this.compressed) {
      const block = inflateTrailer(Buffer.concat(this.compressed, this.compressedBytes), this.encoding)
      this.compressed = undefined
      if (block === undefined) return
      this.trailer = new StatusLineReader()
      this.trailer.push(block, 0, block.length)
    }
    if (!this.trailer) return
    this.trailer.end()
    this.status = this.trailer.status
    this.trailer = undefined
  }
}

function decodeGroups(chars: string): Buffer {
  // a group ending in "=" ends one base64 run, and the decoder stops at the first "=": each run decodes alone
  if (chars.indexOf('=') === -1) return Buffer.from(chars, 'base64')
  const parts: Buffer[] = []
  let start = 0
  for (let end = 4; end <= chars.length; end += 4) {
    if (chars.charCodeAt(end - 1) !== 61) continue
    parts.push(Buffer.from(chars.slice(start, end), 'base64'))
    start = end
  }
  if (start < chars.length) parts.push(Buffer.from(chars.slice(start), 'base64'))
  return Buffer.concat(parts)
}

/** a gRPC-Web trailer frame carrying `code` and `message`, base64-encoded for `application/grpc-web-text` */
export function grpcWebTrailerFrame(code: number, message: string, text: boolean): Buffer {
  const block = Buffer.from(`grpc-status:${code}\r\ngrpc-message:${grpcMessage(message)}\r\n`, 'latin1')
  const frame = Buffer.allocUnsafe(5 + block.length)
  frame[0] = 0x80
  frame.writeUInt32BE(block.length, 1)
  block.copy(frame, 5)
  return text ? Buffer.from(frame.toString('base64'), 'latin1') : frame
}

/**
 * Ends a gRPC-Web response that already started with `code`, in the body as its clients read a status (they
 * see no HTTP trailers): a trailer frame when the body stands between frames, nothing more when its own
 * trailer frame went by. Returns the status the client reads, or undefined when the body stopped inside a
 * frame: the caller cuts the response then (cutResponse), which the client reads as a broken call.
 */
export function endGrpcWebWithStatus(
  res: ServerResponse,
  reader: GrpcWebStatusReader | undefined,
  code: number,
  message: string,
  httpStatus: number,
): number | undefined {
  if (res.writableEnded || res.destroyed) return undefined
  const at = reader?.position() ?? 'inside'
  if (at === 'inside' || reader === undefined) return undefined
  try {
    if (at === 'ended') {
      res.end()
      return reader.result(httpStatus)
    }
    res.end(grpcWebTrailerFrame(code, message, reader.base64))
    return code
  } catch {
    return undefined
  }
}
