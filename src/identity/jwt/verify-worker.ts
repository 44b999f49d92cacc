// The body of a verification worker thread (see pool.ts): verifyJwt (jws.ts) with the same options and the
// same multiple-key loop as IssuerVerifier, off the main thread. It holds public keys only (a JWKS never
// brings private members past jwks.ts, and HMAC secrets are never sent here), keeps the last key set it was
// sent per issuer, and answers with the verified header's alg and kid or the jose error code of the failure.
// The payload is not sent back: the caller decodes the same bytes itself (a few µs) rather than receiving a
// structured clone of an object it can build from the token it already holds.
import { parentPort } from 'node:worker_threads'
import { createLocalJWKSet, errors } from 'jose'
import { type JwtCheckOptions, verifyJwt } from './jws.ts'
import type { WorkerBatch, WorkerJob, WorkerReply } from './pool.ts'

type LocalKeySet = ReturnType<typeof createLocalJWKSet>

const keySets = new Map<string, { version: number; set: LocalKeySet }>()

async function verify(job: WorkerJob): Promise<WorkerReply> {
  if (job.jwks) keySets.set(job.issuer, { version: job.version, set: createLocalJWKSet({ keys: job.jwks }) })
  const held = keySets.get(job.issuer)
  if (!held || held.version !== job.version) return { id: job.id, code: 'ERR_NHI_KEYS_STALE' }
  const options: JwtCheckOptions = {
    issuer: job.issuer,
    algorithms: new Set(job.algorithms),
    clockTolerance: job.clockTolerance,
    now: job.now,
    audience: job.audience,
  }
  try {
    const { protectedHeader } = await verifyWithKeys(job.token, held.set, options)
    return { id: job.id, header: { alg: protectedHeader.alg, kid: protectedHeader.kid } }
  } catch (err) {
    const code = (err as { code?: unknown }).code
    const claim = err instanceof errors.JWTClaimValidationFailed ? err.claim : undefined
    return { id: job.id, code: typeof code === 'string' ? code : 'ERR_NHI_UNKNOWN', claim }
  }
}

// the same loop as IssuerVerifier.verifyOnce: a token without kid may match several keys
async function verifyWithKeys(token: string, keys: LocalKeySet, options: JwtCheckOptions) {
  try {
    return await verifyJwt(token, keys, options)
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err
    for await (const key of err as unknown as AsyncIterable<CryptoKey>) {
      try {
        return await verifyJwt(token, key, options)
      } catch (inner) {
        if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner
      }
    }
    throw err
  }
}

// a batch is answered in one message; verification is synchronous once a key is imported, so the batch
// waits for no more than its own signature checks
parentPort?.on('message', (batch: WorkerBatch) => {
  // one job that throws (a key set jose cannot take) must not leave its batch unanswered: the caller then
  // verifies that token itself
  const replies = batch.map((job) =>
    verify(job).catch((): WorkerReply => ({ id: job.id, code: 'ERR_NHI_UNKNOWN' })),
  )
  void Promise.all(replies).then((answered) => parentPort?.postMessage(answered))
})
// jose is loaded: until now the pool verified new tokens on the main thread rather than wait for this thread
parentPort?.postMessage('ready')
