// The audit output's writer: batches of whole lines written to one file descriptor in order, one write at a
// time on libuv's pool. It replaces pino's destination (sonic-boom), whose synchronous flush at exit retries
// every failed write forever (ENOSPC, a pipe whose reader stopped): a sidecar with a full disk or a stalled
// log collector never finished its shutdown. Here every failure is bounded: a batch the output refuses is
// dropped and counted, a full pipe is waited for, and close() waits a bounded time before counting what is
// left as dropped.
// the module object, not named bindings: a test counts the writes by wrapping fs.write
import fs from 'node:fs'

/** the first retry of a write the output could not take yet (EAGAIN: a pipe whose reader is slow) */
const RETRY_FIRST_MS = 5
/** retries back off to this: a stalled reader costs a wake-up ten times a second, not a busy loop */
const RETRY_MAX_MS = 100
/** queued batches are written together up to this many bytes: fewer writes when the output lags */
const MAX_WRITE_BYTES = 256 * 1024

export interface AuditWriterEvents {
  /** lines lost: the output refused them, or was too far behind, or was still behind at close */
  dropped(lines: number): void
  /** a write failed other than by being full for now; called once per run of failures */
  failed(err: NodeJS.ErrnoException): void
}

export function countLines(data: string | Buffer): number {
  let lines = 0
  for (let i = data.indexOf('\n'); i !== -1; i = data.indexOf('\n', i + 1)) lines++
  return lines
}

export class AuditWriter {
  private readonly queue: Buffer[] = []
  /** bytes queued, the one being written included */
  private queued = 0
  private writing = false
  private closed = false
  private retryMs = RETRY_FIRST_MS
  private retryTimer: NodeJS.Timeout | undefined
  /** a write has failed since the last one that succeeded (failures are reported once per run) */
  private failing = false
  private idle: (() => void)[] = []
  /**
   * The descriptor the head of the queue must go to: set while a batch is part-written, so its rest follows
   * its beginning into the same file even when the output was rotated in between.
   */
  private headFd: number | undefined
  /** descriptors rotated away from, closed as soon as no write uses them and no part-written batch needs them */
  private retired: number[] = []

  constructor(
    private descriptor: number,
    private readonly maxQueuedBytes: number,
    private readonly events: AuditWriterEvents,
    /** the descriptor is the writer's to close (a file it opened), not the process's stdout */
    private ownsFd: boolean,
  ) {}

  /** the descriptor written to */
  get fd(): number {
    return this.descriptor
  }

  /** bytes waiting for the output */
  get pendingBytes(): number {
    return this.queued
  }

  /** queues whole lines; beyond maxQueuedBytes (or after close) they are dropped and counted instead */
  write(data: Buffer): void {
    if (data.length === 0) return
    if (this.closed || this.queued + data.length > this.maxQueuedBytes) {
      this.events.dropped(countLines(data))
      return
    }
    this.queue.push(data)
    this.queued += data.length
    if (!this.writing) this.next()
  }

  /**
   * Writes on to another descriptor (the output's path was rotated: a new file there); what is queued goes to
   * the new one, except the rest of a batch already part-written to the old one. The old descriptor is closed
   * as soon as no write uses it, not when the queue runs dry: under steady traffic it may never, and a rotated
   * file held open keeps its disk space.
   */
  switchTo(fd: number): void {
    const old = this.descriptor
    const owned = this.ownsFd
    this.descriptor = fd
    this.ownsFd = true
    if (owned && old !== fd) {
      this.retired.push(old)
      if (!this.writing) this.closeRetired()
    }
  }

  private closeRetired(): void {
    const keep = this.headFd
    const retired = this.retired
    this.retired = []
    for (const fd of retired) {
      if (fd === keep) this.retired.push(fd)
      else fs.close(fd, () => {})
    }
  }

  /**
   * Resolves once everything queued is written, or after `timeoutMs`: what is still queued then is counted
   * as dropped, so a full disk or a stalled reader cannot hold the process at exit.
   */
  close(timeoutMs: number): Promise<void> {
    this.closed = true
    return new Promise<void>((resolve) => {
      let done = false
      const finish = () => {
        if (done) return
        done = true
        clearTimeout(deadline)
        clearTimeout(this.retryTimer)
        const left = this.queue.splice(0)
        this.queued = 0
        let lines = 0
        for (const b of left) lines += countLines(b)
        if (lines > 0) this.events.dropped(lines)
        // a write still on the pool keeps its descriptor: closed under it, the number could be reused
        if (!this.writing) {
          this.headFd = undefined
          this.closeRetired()
          if (this.ownsFd) fs.close(this.descriptor, () => {})
        }
        resolve()
      }
      const deadline = setTimeout(finish, timeoutMs)
      deadline.unref()
      if (!this.writing && this.queue.length === 0) finish()
      else this.afterIdle(finish)
    })
  }

  private afterIdle(fn: () => void): void {
    this.idle.push(fn)
  }

  /** starts the next write; called only while no write is on the pool */
  private next(): void {
    this.retryTimer = undefined
    if (this.retired.length > 0) this.closeRetired()
    const queue = this.queue
    if (queue.length === 0) {
      this.writing = false
      const waiting = this.idle
      this.idle = []
      for (const fn of waiting) fn()
      return
    }
    this.writing = true
    // batches that piled up while the output lagged go out in one write (not with the rest of a part-written
    // one, which may belong to a file rotated away)
    if (this.headFd === undefined && queue.length > 1 && queue[0]!.length < MAX_WRITE_BYTES) {
      let n = 0
      let bytes = 0
      while (n < queue.length && bytes + queue[n]!.length <= MAX_WRITE_BYTES) bytes += queue[n++]!.length
      if (n > 1) queue.splice(0, n, Buffer.concat(queue.slice(0, n), bytes))
    }
    const head = queue[0]!
    const fd = this.headFd ?? this.descriptor
    fs.write(fd, head, 0, head.length, null, (err, written) => this.written(head, fd, err, written))
  }

  private written(head: Buffer, fd: number, err: NodeJS.ErrnoException | null, written: number): void {
    // given up on at close: its lines are already counted
    if (this.queue[0] !== head) {
      this.writing = false
      return
    }
    if (err) {
      if (err.code === 'EAGAIN' || err.code === 'EINTR') {
        // full for now (a pipe whose reader lags): the same bytes again, a little later
        this.retryTimer = setTimeout(() => this.next(), this.retryMs)
        this.retryTimer.unref()
        this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2)
        return
      }
      // refused (ENOSPC, EPIPE, EIO, EBADF...): this batch is lost, the next one is tried after a pause,
      // so an output that recovers (space freed) gets the lines from then on
      this.queue.shift()
      this.queued -= head.length
      this.headFd = undefined
      this.events.dropped(countLines(head))
      if (!this.failing) {
        this.failing = true
        this.events.failed(err)
      }
      this.retryTimer = setTimeout(() => this.next(), RETRY_MAX_MS)
      this.retryTimer.unref()
      return
    }
    this.failing = false
    this.retryMs = RETRY_FIRST_MS
    this.queued -= written
    if (written < head.length) {
      this.queue[0] = head.subarray(written)
      this.headFd = fd
    } else {
      this.queue.shift()
      this.headFd = undefined
    }
    this.next()
  }
}
