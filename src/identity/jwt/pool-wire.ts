// The messages between the verification pool (pool.ts) and its workers (verify-worker.ts), apart so the
// worker's bundle takes these few constants without the pool's code.
import type { JWK } from 'jose'

/** an issuer's checks and key set, sent to a worker that does not hold this version of them */
export interface IssuerSetup {
  issuer: string
  /** the key set's version; the worker refuses a job for a version it does not hold */
  version: number
  jwks: JWK[]
  algorithms: string[]
  audience?: string[] | undefined
  clockTolerance: number
}

/**
 * fields per job in WorkerBatch.jobs: id, issuer, key-set version, clock (unix ms), token, and the index in
 * WorkerBatch.setup of what the worker takes on for this issuer just before this job (-1: nothing)
 */
export const JOB_FIELDS = 6
/** fields per job in a reply: id, code ('' when verified), alg (verified) or claim (failed), kid */
export const REPLY_FIELDS = 4
/** a reply's claim or kid that is not there (a number, so that no string, not even '', is mistaken for it) */
export const ABSENT = -1

/** what a worker is sent: the jobs started in one turn of the event loop, JOB_FIELDS per job */
export interface WorkerBatch {
  setup?: IssuerSetup[]
  jobs: (string | number)[]
}

/** what a worker answers: REPLY_FIELDS per job of the batch */
export type WorkerBatchReply = (string | number)[]
