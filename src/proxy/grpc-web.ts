// gRPC-Web (browsers' gRPC, `application/grpc-web*`): the call's status travels in the response body, not in
// HTTP trailers, as a last frame whose flag byte has its high bit set and whose payload is the trailer block
// (`grpc-status: 0\r\ngrpc-message: …\r\n`). Every frame is length-prefixed (flag byte, 4-byte big-endian
// length); `application/grpc-web-text` base64-encodes the frames. The proxy passes the body on untouched and
// reads it on the way to find that status, so a gRPC-Web call is counted by the status its client reads.
import type { IncomingHttpHeaders } from 'node:http'
import { GRPC, grpcStatusWithoutOne } from './grpc.ts'

export function isGrpcWeb(headers: IncomingHttpHeaders): boolean {
  const ct = headers['content-type']
  return typeof ct === 'string' && ct.startsWith('application/grpc-web')
}

/** the response body is base64 (`application/grpc-web-text`), by the response's content type */
export function isGrpcWebText(contentType: unknown): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc-web-text')
}

/** `grpc-status` as a client reads it: 0–16, anything else UNKNOWN */
export function grpcStatusValue(value: string): number {
  const n = Number(value)
  return Number.isInteger(n) && n >= 0 && n <= 16 ? n : GRPC.UNKNOWN
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
  let status: number | undefined
  for (let i = 0; i + 1 < response.length; i += 2) {
    const name = response[i]!.toLowerCase()
    if (name === 'content-type') text = isGrpcWebText(response[i + 1])
    else if (name === 'grpc-status') status = grpcStatusValue(response[i + 1]!)
  }
  return new GrpcWebStatusReader(text, status)
}

/** a trailer frame larger than this is not read: its status then counts as missing */
const MAX_TRAILER_FRAME = 8 * 1024

const STATUS_LINE = /(?:^|\r?\n)grpc-status:[\t ]*(\d{1,3})[\t ]*(?:\r?\n|$)/i

/**
 * Reads a gRPC-Web response body as it streams by, keeping nothing but the frame header being read and the
 * trailer frame's payload (bounded). `status` is set once a complete trailer frame carrying `grpc-status` went by.
 */
export class GrpcWebStatusReader {
  status: number | undefined
  /** bytes of the current frame's header seen (0–5), then its payload still to come */
  private header = Buffer.alloc(5)
  private headerSeen = 0
  private remaining = 0
  private trailer: Buffer[] | undefined
  private trailerBytes = 0
  /** text mode: base64 characters left over from the last chunk (fewer than 4) */
  private pendingText = ''
  private done = false

  /**
   * @param text the response is `application/grpc-web-text` (base64)
   * @param headerStatus `grpc-status` of the response's header section (a trailers-only answer)
   */
  constructor(
    private readonly text: boolean,
    private readonly headerStatus?: number,
  ) {}

  /** the status the client reads once the response ended: the header section's, the trailer frame's, else gRPC's HTTP mapping */
  result(httpStatus: number): number {
    return this.headerStatus ?? this.status ?? grpcStatusWithoutOne(httpStatus)
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
        this.trailer = isTrailer && this.remaining <= MAX_TRAILER_FRAME ? [] : undefined
        this.trailerBytes = 0
        if (this.remaining === 0) this.frameEnded(isTrailer)
        continue
      }
      const take = Math.min(this.remaining, bytes.length - i)
      if (this.trailer) {
        this.trailer.push(bytes.subarray(i, i + take))
        this.trailerBytes += take
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
    if (!this.trailer) return
    const block = Buffer.concat(this.trailer, this.trailerBytes).toString('latin1')
    this.trailer = undefined
    const m = STATUS_LINE.exec(block)
    if (m) this.status = grpcStatusValue(m[1]!)
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
