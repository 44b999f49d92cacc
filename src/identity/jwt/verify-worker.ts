// The body of a verification worker thread (see pool.ts): verifyJwtWithKeySet (jws.ts) with the same options
// as IssuerVerifier, off the main thread. It holds public keys only (a JWKS never
// brings private members past jwks.ts, and HMAC secrets are never sent here), keeps the last key set it was
// sent per issuer, and answers with the verified header's alg and kid or the jose error code of the failure.
// The payload is not sent back: the caller decodes the same bytes itself (a few µs) rather than receiving a
// structured clone of an object it can build from the token it already holds.
import { parentPort } from 'node:worker_threads'
import { createLocalJWKSet, errors } from 'jose'
import { type JwtCheckOptions, verifyJwtWithKeySet } from './jws.ts'
import {
  ABSENT,
  type IssuerSetup,
  JOB_FIELDS,
  REPLY_FIELDS,
  type WorkerBatch,
  type WorkerBatchReply,
} from './pool-wire.ts'

type LocalKeySet = ReturnType<typeof createLocalJWKSet>

interface Held {
  version: number
  set: LocalKeySet
  /** the issuer's checks; `now` is set per job */
  options: JwtCheckOptions
}

const issuers = new Map<string, Held>()

function setUp(s: IssuerSetup): void {
  issuers.set(s.issuer, {
    version: s.version,
    set: createLocalJWKSet({ keys: s.jwks }),
    options: {
      issuer: s.issuer,
      algorithms: new Set(s.algorithms),
      clockTolerance: s.clockTolerance,
      now: 0,
      audience: s.audience,
    },
  })
}

const UNKNOWN = ['ERR_NHI_UNKNOWN', ABSENT, ABSENT] as const

/** the job's reply fields (REPLY_FIELDS) after `id`: code ('' verified), alg or claim, kid (ABSENT: none) */
async function verify(
  issuer: string,
  version: number,
  now: number,
  token: string,
): Promise<readonly [string, string | number, string | number]> {
  const held = issuers.get(issuer)
  if (!held || held.version !== version) return ['ERR_NHI_KEYS_STALE', ABSENT, ABSENT]
  const options: JwtCheckOptions = { ...held.options, now }
  try {
    const { protectedHeader } = await verifyJwtWithKeySet(token, held.set, options)
    const kid = protectedHeader.kid
    return ['', protectedHeader.alg, typeof kid === 'string' ? kid : ABSENT]
  } catch (err) {
    const code = (err as { code?: unknown }).code
    const claim = err instanceof errors.JWTClaimValidationFailed ? err.claim : ABSENT
    return [typeof code === 'string' && code !== '' ? code : 'ERR_NHI_UNKNOWN', claim, ABSENT]
  }
}

// a batch is answered in one message; verification is synchronous once a key is imported, so the batch
// waits for no more than its own signature checks
parentPort?.on('message', (batch: WorkerBatch) => {
  const jobs = batch.jobs
  const out: WorkerBatchReply = new Array((jobs.length / JOB_FIELDS) * REPLY_FIELDS)
  const answers: Promise<void>[] = []
  for (let i = 0, o = 0; i + JOB_FIELDS <= jobs.length; i += JOB_FIELDS, o += REPLY_FIELDS) {
    const id = jobs[i] as number
    const issuer = jobs[i + 1] as string
    const setup = jobs[i + 5] as number
    const answer = (fields: readonly [string, string | number, string | number]) => {
      out[o] = id
      out[o + 1] = fields[0]
      out[o + 2] = fields[1]
      out[o + 3] = fields[2]
    }
    // one job that throws (a key set jose cannot take) must not leave its batch unanswered: the caller then
    // verifies that token itself. Setups are taken on in job order, so each job meets the keys it was sent with.
    try {
      if (setup >= 0) setUp(batch.setup![setup]!)
      answers.push(
        verify(issuer, jobs[i + 2] as number, jobs[i + 3] as number, jobs[i + 4] as string)
          .catch(() => UNKNOWN)
          .then(answer),
      )
    } catch {
      answer(UNKNOWN)
    }
  }
  void Promise.all(answers).then(() => parentPort?.postMessage(out))
})
// jose is loaded: until now the pool verified new tokens on the main thread rather than wait for this thread
parentPort?.postMessage('ready')
