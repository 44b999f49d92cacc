// A small pool of worker threads for first-time asymmetric signature verification. Cached tokens are answered
// synchronously and never come here; new tokens do, so a flood of never-seen tokens costs the main thread a
// message each way instead of jose's whole verification, and everyone else's requests keep being served.
// Waiting jobs are queued per peer (an IPv6 host per /64, peer-group.ts) and served round-robin (one
// client's flood does not delay another client's new token by more than one turn), with a bound per peer
// and a global one: past either the job is refused at once (the caller attributes the request as a failed
// verification, `verification_busy`). The global bound is shared, so when it is reached the newcomer of a
// peer with fewer jobs waiting takes the place of the newest job of the peer with the most (that job is
// refused instead): a few addresses that fill the queue between them cannot keep every other client's new
// tokens out.
// Jobs go to a worker in batches (those started in one turn of the event loop, one message) and come back
// in batches: a message each way per job cost about as much CPU as the signature check itself, most of it
// in waking the other thread, and on a small pod that is CPU the flood takes from everyone. A batch is flat
// (per job its id, clock and token; an issuer's options and keys only when that worker lacks them) and so is
// the reply: structured clone pays per object and per property name, and a flood pays it per token.
import { availableParallelism } from 'node:os'
import type { Worker } from 'node:worker_threads'
import type { JWK } from 'jose'
import { startWorkerThread } from '../../util/worker-thread.ts'
import { peerGroup } from './peer-group.ts'
import {
  ABSENT,
  type IssuerSetup,
  REPLY_FIELDS,
  type WorkerBatch,
  type WorkerBatchReply,
} from './pool-wire.ts'

export type { IssuerSetup, WorkerBatch, WorkerBatchReply } from './pool-wire.ts'

/** what a caller asks: one token and its issuer's checks */
export interface PoolJob {
  token: string
  issuer: string
  algorithms: string[]
  /** undefined: any audience; [] accepts none (as IssuerVerifier) */
  audience?: string[] | undefined
  clockTolerance: number
  /** unix ms, the verifier's clock */
  now: number
}

export type WorkerReply =
  /** verified: the caller decodes the payload of the token it sent */
  | { id: number; header: { alg: string; kid: string | undefined } }
  /** a jose error code (or ERR_NHI_*: the pool's own), with the claim of a claim validation failure */
  | { id: number; code: string; claim?: string | undefined }
export interface PoolKeys {
  version: number
  jwks: JWK[]
}

/**
 * no worker could take the job (it died, never started, or is still starting: the first new tokens after
 * start-up do not wait for a thread to boot): the caller verifies on the main thread instead
 */
export const WORKER_GONE = 'ERR_NHI_WORKER_GONE'
/** the job waited, and gave its place to another peer's when the queue was full: refused as busy */
export const POOL_BUSY = 'ERR_NHI_POOL_BUSY'

export interface VerifyPoolOptions {
  /** worker threads, started on first use */
  size: number
  /** jobs waiting for a worker, all peers together */
  maxQueue: number
  /** jobs waiting for a worker from one peer (an IPv4 address, or an IPv6 /64) */
  maxQueuePerPeer: number
  /** jobs handed to one worker at once (jose verifies asynchronously, so a worker overlaps a few) */
  perWorker?: number
  /** a worker without a job for this long is stopped; the next new token starts one again */
  idleMs?: number
}

export interface VerifyPoolStats {
  /** workers ready for jobs */
  workers: number
  /** workers still starting (jobs meanwhile are verified on the main thread) */
  starting: number
  /** jobs waiting for a worker */
  queued: number
  /** jobs a worker is verifying */
  running: number
  /** jobs answered by a worker since start */
  verified: number
  /** jobs refused because a queue bound was reached, at once or after giving their place to another peer's */
  overflowed: number
  /** messages sent to workers, each carrying the jobs started in one turn of the event loop */
  batches: number
}

interface Pending {
  id: number
  job: PoolJob
  keys: PoolKeys
  resolve: (reply: WorkerReply) => void
}

/** what a worker holds for one issuer: the checks and the key-set version */
interface Held {
  version: number
  algorithms: string[]
  audience: string[] | undefined
  clockTolerance: number
}

interface Slot {
  worker: Worker
  running: Map<number, Pending>
  /** jobs started in this turn of the event loop (JOB_FIELDS each), sent together by `flush` */
  outbox: (string | number)[]
  /** issuers' checks and keys the jobs in the outbox refer to */
  setup: IssuerSetup[] | undefined
  /** the checks and key-set version this worker holds, per issuer */
  held: Map<string, Held>
  /** the worker has loaded its code and takes jobs */
  ready: boolean
  /** stops the worker once it has been idle for idleMs (set while it has no job) */
  idleTimer?: NodeJS.Timeout | undefined
}

// a worker verifies synchronously; the bound is how many jobs one batch (and one reply) may carry
export const DEFAULT_PER_WORKER = 16
/**
 * A worker thread holds ≈ 15–30 MB of RSS (bench/README.md). New tokens come in bursts (start-up, a token
 * refresh wave, a flood); between them a pod whose callers are all cached gives that memory back. A restart
 * costs the next burst's first tokens being verified inline while the thread boots, as at start-up.
 */
const DEFAULT_IDLE_MS = 60_000

/**
 * One worker leaves the event loop free on a small pod (the RSA/EC work itself runs on libuv's threads
 * either way); a second only pays with four or more cores, where the main thread is not already short of one.
 */
export function defaultVerifyWorkers(): number {
  return availableParallelism() >= 4 ? 2 : 1
}

export class VerifyPool {
  private readonly opts: Required<VerifyPoolOptions>
  private readonly slots: Slot[] = []
  /** waiting jobs per peer (peerGroup); Map order is the round-robin order (a served peer moves to the back) */
  private readonly waiting = new Map<string, Pending[]>()
  /** the last peer queued for and its group: a flood mostly comes from one address */
  private lastPeer = ''
  private lastGroup = ''
  private queued = 0
  private nextId = 1
  private verified = 0
  private overflowed = 0
  private batches = 0
  private closed = false
  /** a worker that exited before answering anything: the pool stops spawning and callers verify inline */
  private broken = false

  constructor(opts: VerifyPoolOptions) {
    this.opts = { perWorker: DEFAULT_PER_WORKER, idleMs: DEFAULT_IDLE_MS, ...opts }
  }

  /** false once closed, or when workers cannot start here: verify on the main thread */
  get usable(): boolean {
    return !this.closed && !this.broken && this.opts.size > 0
  }

  stats(): VerifyPoolStats {
    let running = 0
    for (const s of this.slots) running += s.running.size
    return {
      workers: this.slots.filter((s) => s.ready).length,
      starting: this.slots.filter((s) => !s.ready).length,
      queued: this.queued,
      running,
      verified: this.verified,
      overflowed: this.overflowed,
      batches: this.batches,
    }
  }

  /**
   * undefined when the peer's queue is full, or the global one is and no peer has two more jobs waiting than
   * this one: the job was refused, nothing was queued. A queued job may still be answered POOL_BUSY, when a
   * peer with fewer jobs waiting takes its place.
   */
  verify(job: PoolJob, keys: PoolKeys, peer: string): Promise<WorkerReply> | undefined {
    if (!this.usable) return Promise.resolve({ id: 0, code: WORKER_GONE })
    const slot = this.waiting.size === 0 ? this.freeSlot() : undefined
    if (!this.usable || !this.slots.some((s) => s.ready)) return Promise.resolve({ id: 0, code: WORKER_GONE })
    let queue: Pending[] | undefined
    let group = ''
    if (!slot) {
      // only a job that has to wait needs its group: the common case, a free worker, never computes it
      if (peer !== this.lastPeer) {
        this.lastPeer = peer
        this.lastGroup = peerGroup(peer)
      }
      group = this.lastGroup
      queue = this.waiting.get(group)
      const waiting = queue?.length ?? 0
      if (
        waiting >= this.opts.maxQueuePerPeer ||
        (this.queued >= this.opts.maxQueue && !this.makeRoomFor(waiting))
      ) {
        this.overflowed++
        return undefined
      }
    }
    return new Promise<WorkerReply>((resolve) => {
      const pending: Pending = { id: this.nextId++, job, keys, resolve }
      if (slot) {
        this.start(slot, pending)
        return
      }
      if (queue) queue.push(pending)
      else this.waiting.set(group, [pending])
      this.queued++
    })
  }

  /**
   * The queue is full: refuses the newest job of the peer with the most waiting, when that is at least two
   * more than the newcomer's peer has (one more would only swap their places, to no one's benefit). The
   * scan runs only on a full queue and covers at most maxQueue peers.
   */
  private makeRoomFor(waiting: number): boolean {
    let longest: Pending[] | undefined
    for (const q of this.waiting.values()) if (!longest || q.length > longest.length) longest = q
    if (!longest || longest.length < waiting + 2) return false
    const evicted = longest.pop()!
    this.queued--
    this.overflowed++
    evicted.resolve({ id: evicted.id, code: POOL_BUSY })
    return true
  }

  close(): void {
    this.closed = true
    for (const queue of this.waiting.values()) for (const p of queue) p.resolve({ id: 0, code: WORKER_GONE })
    this.waiting.clear()
    this.queued = 0
    for (const slot of this.slots.splice(0)) this.retire(slot)
  }

  /** a ready worker with room for one more job; starts another while the pool is below its size */
  private freeSlot(): Slot | undefined {
    let best: Slot | undefined
    for (const s of this.slots) if (s.ready && (!best || s.running.size < best.running.size)) best = s
    if (best && best.running.size === 0) return best
    if (this.slots.length < this.opts.size) this.spawn()
    return best && best.running.size < this.opts.perWorker ? best : undefined
  }

  private start(slot: Slot, p: Pending): void {
    const job = p.job
    const version = p.keys.version
    const held = slot.held.get(job.issuer)
    let setupIndex = -1
    if (
      held === undefined ||
      held.version !== version ||
      held.clockTolerance !== job.clockTolerance ||
      !sameList(held.algorithms, job.algorithms) ||
      !sameList(held.audience, job.audience)
    ) {
      const setup: IssuerSetup = {
        issuer: job.issuer,
        version,
        jwks: p.keys.jwks,
        algorithms: job.algorithms,
        audience: job.audience,
        clockTolerance: job.clockTolerance,
      }
      if (slot.setup === undefined) slot.setup = []
      setupIndex = slot.setup.push(setup) - 1
      slot.held.set(job.issuer, {
        version,
        algorithms: job.algorithms,
        audience: job.audience,
        clockTolerance: job.clockTolerance,
      })
    }
    if (slot.running.size === 0) {
      slot.worker.ref()
      clearTimeout(slot.idleTimer)
      slot.idleTimer = undefined
    }
    slot.running.set(p.id, p)
    const first = slot.outbox.length === 0
    slot.outbox.push(p.id, job.issuer, version, job.now, job.token, setupIndex)
    // setImmediate, not a microtask: each request's tokens arrive in a callback of their own, and the
    // batch is what one poll of the event loop brought
    if (first) setImmediate(() => this.flush(slot))
  }

  private flush(slot: Slot): void {
    if (slot.outbox.length === 0) return
    const batch: WorkerBatch = { jobs: slot.outbox }
    if (slot.setup) batch.setup = slot.setup
    slot.outbox = []
    slot.setup = undefined
    // a retired or dead worker already answered these jobs WORKER_GONE
    if (!this.slots.includes(slot)) return
    this.batches++
    slot.worker.postMessage(batch)
  }

  private spawn(): void {
    let worker: Worker
    try {
      worker = startWorker()
    } catch {
      this.broken = true
      return
    }
    // an idle pool must not keep the process alive; a worker with jobs is ref'd in start()
    worker.unref()
    const slot: Slot = {
      worker,
      running: new Map(),
      outbox: [],
      setup: undefined,
      held: new Map(),
      ready: false,
    }
    worker.on('message', (replies: WorkerBatchReply | 'ready') => {
      if (replies === 'ready') {
        slot.ready = true
        this.drain(slot)
        if (slot.running.size === 0) this.idle(slot)
      } else this.answered(slot, replies)
    })
    const gone = () => this.gone(slot)
    worker.on('error', gone)
    worker.on('exit', gone)
    this.slots.push(slot)
  }

  private answered(slot: Slot, replies: WorkerBatchReply): void {
    for (let i = 0; i + REPLY_FIELDS <= replies.length; i += REPLY_FIELDS) {
      const id = replies[i] as number
      const p = slot.running.get(id)
      if (!p) continue
      slot.running.delete(id)
      this.verified++
      const code = replies[i + 1] as string
      const detail = replies[i + 2]
      if (code === '') {
        const kid = replies[i + 3]
        p.resolve({
          id,
          header: { alg: detail as string, kid: kid === ABSENT ? undefined : (kid as string) },
        })
      } else p.resolve(detail === ABSENT ? { id, code } : { id, code, claim: detail as string })
    }
    this.drain(slot)
    // The jobs that waited go now, not at the end of this turn: the callers just answered continue in this
    // turn's microtasks (their requests' whole remaining path), and the worker would sit idle through them.
    this.flush(slot)
    if (slot.running.size === 0) {
      slot.worker.unref()
      this.idle(slot)
    }
  }

  /** the slot has no job: stop its worker unless one arrives within idleMs */
  private idle(slot: Slot): void {
    clearTimeout(slot.idleTimer)
    slot.idleTimer = setTimeout(() => {
      const i = this.slots.indexOf(slot)
      if (i === -1 || slot.running.size > 0) return
      this.slots.splice(i, 1)
      this.retire(slot)
    }, this.opts.idleMs)
    slot.idleTimer.unref()
  }

  /** hands waiting jobs to a worker with room, taking one per peer in turn */
  private drain(slot: Slot): void {
    while (this.queued > 0 && slot.running.size < this.opts.perWorker) {
      const [peer, queue] = this.waiting.entries().next().value as [string, Pending[]]
      const p = queue.shift()!
      this.waiting.delete(peer)
      if (queue.length > 0) this.waiting.set(peer, queue)
      this.queued--
      this.start(slot, p)
    }
  }

  private gone(slot: Slot): void {
    const i = this.slots.indexOf(slot)
    if (i === -1) return
    this.slots.splice(i, 1)
    clearTimeout(slot.idleTimer)
    if (!slot.ready) this.broken = true
    for (const p of slot.running.values()) p.resolve({ id: p.id, code: WORKER_GONE })
    slot.running.clear()
    slot.outbox = []
    slot.setup = undefined
    void slot.worker.terminate().catch(() => {})
    // jobs still waiting go to a replacement worker, or back to their callers to verify inline
    if (this.usable) {
      const next = this.queued > 0 ? this.freeSlot() : undefined
      if (next) {
        this.drain(next)
        return
      }
    }
    if (!this.usable || !this.slots.some((s) => s.ready)) {
      for (const queue of this.waiting.values())
        for (const p of queue) p.resolve({ id: p.id, code: WORKER_GONE })
      this.waiting.clear()
      this.queued = 0
    }
  }

  private retire(slot: Slot): void {
    clearTimeout(slot.idleTimer)
    slot.worker.removeAllListeners()
    for (const p of slot.running.values()) p.resolve({ id: p.id, code: WORKER_GONE })
    slot.running.clear()
    slot.outbox = []
    slot.setup = undefined
    void slot.worker.terminate().catch(() => {})
  }
}

function sameList(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (a === b) return true
  if (a === undefined || b === undefined || a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function startWorker(): Worker {
  return startWorkerThread(new URL('./verify-worker.ts', import.meta.url), 'jwt-verify-worker.mjs', {
    resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 24 },
  })
}
