// Bench tokens: many distinct, valid, Kubernetes-shaped service-account JWTs from one signing key.
// Signing is the slow part (RS256 ≈ 1.5 ms per token here), so tokens are signed with node:crypto
// directly in worker threads, in chunks, and token sets are cached on disk for a day.
import { generateKeyPairSync, type JsonWebKey } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'

export type TokenAlg = 'RS256' | 'ES256'

export const BENCH_ISSUER = 'https://kubernetes.default.svc.cluster.local'
export const BENCH_AUDIENCE = 'bench'

export interface SigningMaterial {
  alg: TokenAlg
  kid: string
  privatePem: string
  publicJwk: JsonWebKey
}

export interface ClaimShape {
  /** tokens map onto this many distinct service accounts (identities) */
  identities: number
  /** seconds since epoch */
  exp: number
}

export function newSigningMaterial(alg: TokenAlg, kid: string): SigningMaterial {
  const pair =
    alg === 'RS256'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return {
    alg,
    kid,
    privatePem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicJwk: { ...pair.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' } as JsonWebKey,
  }
}

// Plain JS so the worker runs without a TypeScript loader, whatever started the parent.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createPrivateKey, sign } = require('node:crypto')
let key
const b64 = (s) => Buffer.from(s).toString('base64url')
parentPort.on('message', (m) => {
  key ??= createPrivateKey(m.pem)
  const header = b64(JSON.stringify({ alg: m.alg, kid: m.kid, typ: 'JWT' }))
  const now = Math.floor(Date.now() / 1000)
  const out = []
  for (let i = m.start; i < m.start + m.count; i++) {
    const id = i % m.identities
    const ns = 'bench-' + (id % 97)
    const sa = 'sa-' + id
    const payload = b64(JSON.stringify({
      iss: m.iss, aud: [m.aud], sub: 'system:serviceaccount:' + ns + ':' + sa,
      iat: now - 5, nbf: now - 5, exp: m.exp, jti: 'j' + i,
      'kubernetes.io': { namespace: ns, serviceaccount: { name: sa }, pod: { name: sa + '-' + i }, warnafter: m.exp },
    }))
    const input = header + '.' + payload
    const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')
    out.push(input + '.' + sig)
  }
  parentPort.postMessage(out)
})
`

interface Waiter {
  resolve: (tokens: string[]) => void
  reject: (err: unknown) => void
}

/**
 * A small pool of signing threads; `mint` hands out chunks round-robin. A thread answers its chunks in the
 * order it was given them, so each keeps a queue of the callers waiting on it: a chunk given to a thread that
 * is still busy gets its own answer, not a copy of the one before (which, with one listener per call on a
 * shared thread, had handed two callers the same tokens).
 */
export class Minter {
  private readonly workers: Worker[]
  /** per thread, the callers waiting on it, in the order their chunks were given */
  private readonly waiting: Waiter[][]
  private next = 0

  constructor(
    private readonly key: SigningMaterial,
    private readonly shape: ClaimShape,
    threads = Math.max(1, availableParallelism()),
  ) {
    this.workers = Array.from({ length: threads }, () => new Worker(WORKER_SOURCE, { eval: true }))
    this.waiting = this.workers.map((worker) => {
      const queue: Waiter[] = []
      worker.on('message', (tokens: string[]) => queue.shift()?.resolve(tokens))
      worker.on('error', (err) => {
        for (const waiter of queue.splice(0)) waiter.reject(err)
      })
      return queue
    })
  }

  get threads(): number {
    return this.workers.length
  }

  /** the tokens numbered `start` to `start + count - 1` (each number is its own `jti` and pod) */
  mint(start: number, count: number): Promise<string[]> {
    const i = this.next++ % this.workers.length
    return new Promise((resolve, reject) => {
      this.waiting[i]!.push({ resolve, reject })
      this.workers[i]!.postMessage({
        pem: this.key.privatePem,
        alg: this.key.alg,
        kid: this.key.kid,
        iss: BENCH_ISSUER,
        aud: BENCH_AUDIENCE,
        identities: this.shape.identities,
        exp: this.shape.exp,
        start,
        count,
      })
    })
  }

  /** `count` tokens, signed in parallel chunks; each worker handles one chunk at a time. */
  async mintAll(count: number, chunk = 2_000): Promise<string[]> {
    const starts: number[] = []
    for (let s = 0; s < count; s += chunk) starts.push(s)
    const results: string[][] = new Array(starts.length)
    let cursor = 0
    const lane = async () => {
      while (cursor < starts.length) {
        const i = cursor++
        const s = starts[i]!
        results[i] = await this.mint(s, Math.min(chunk, count - s))
      }
    }
    await Promise.all(this.workers.map(lane))
    return results.flat()
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()))
  }
}

export interface TokenSet {
  key: SigningMaterial
  tokens: string[]
  /** true when loaded from the on-disk cache instead of signed now */
  cached: boolean
  mintMs: number
}

const CACHE_DIR = join(tmpdir(), 'nhi-bench-cache')
const DAY = 86_400

/**
 * A named set of `count` distinct tokens, reused from the cache while it stays valid for 3 more hours (and
 * holds no token twice: sets saved by an older minter could).
 */
export async function tokenSet(
  name: string,
  alg: TokenAlg,
  count: number,
  identities: number,
): Promise<TokenSet> {
  const file = join(CACHE_DIR, `${name}-${alg}-${count}-${identities}.json`)
  const now = Math.floor(Date.now() / 1000)
  try {
    const saved = JSON.parse(await readFile(file, 'utf8')) as {
      key: SigningMaterial
      exp: number
      tokens: string[]
    }
    if (saved.exp - now > 3 * 3600 && saved.tokens.length === count && new Set(saved.tokens).size === count) {
      return { key: saved.key, tokens: saved.tokens, cached: true, mintMs: 0 }
    }
  } catch {}
  const started = performance.now()
  const key = newSigningMaterial(alg, `bench-${name}-${now}`)
  const exp = now + DAY
  const minter = new Minter(key, { identities, exp })
  try {
    const tokens = await minter.mintAll(count)
    await mkdir(CACHE_DIR, { recursive: true })
    await writeFile(file, JSON.stringify({ key, exp, tokens }))
    return { key, tokens, cached: false, mintMs: performance.now() - started }
  } finally {
    await minter.close()
  }
}

/**
 * The bench's usual JWT load in `dir`: 1,000 RS256 tokens over 100 service accounts, one per line in
 * `tokens.txt` (what wrk and the load generator read), and `jwks.json`, the key set that verifies them.
 */
export async function rotatingTokens(
  dir: string,
): Promise<{ tokens: string[]; tokensFile: string; jwksFile: string }> {
  const rotating = await tokenSet('rotating', 'RS256', 1_000, 100)
  const tokensFile = join(dir, 'tokens.txt')
  const jwksFile = join(dir, 'jwks.json')
  await Promise.all([
    writeFile(tokensFile, `${rotating.tokens.join('\n')}\n`),
    writeFile(jwksFile, JSON.stringify({ keys: [rotating.key.publicJwk] })),
  ])
  return { tokens: rotating.tokens, tokensFile, jwksFile }
}
