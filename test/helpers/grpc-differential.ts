// What the gRPC and the gRPC-Web differentials (grpc-differential.test.ts, grpc-web-differential.test.ts) hold
// alike, so that both draw the same kinds of metadata and status details, give the proxy the same callers and
// read its audit trail by the same rules: a change to one of those is then a change to both.
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import fc from 'fast-check'
import type { Test } from 'tap'
import { eventually } from './eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from './jwks.ts'

// ---- the grammar ------------------------------------------------------------------------------------------

export const ASCII = [...' abcdefghijXYZ0123456789-_.:;/=+*()[]{}?!@#$%&~"\'`^|<>']
const binaryValue = fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a).toString('base64'))
const ASCII_KEYS = ['x-a', 'x-b', 'x-long-metadata-name-for-the-differential']
const BINARY_KEYS = ['x-trace-bin', 'x-blob-bin']

/**
 * Metadata as [key, values]: a key with two or three values is sent as repeated entries; a `-bin` key's
 * values are base64, an ASCII key's drawn from `asciiValue`.
 */
export const metadataOf = (asciiValue: fc.Arbitrary<string>) =>
  fc.uniqueArray(
    fc.oneof(
      fc.tuple(fc.constantFrom(...ASCII_KEYS), fc.array(asciiValue, { minLength: 1, maxLength: 3 })),
      fc.tuple(fc.constantFrom(...BINARY_KEYS), fc.array(binaryValue, { minLength: 1, maxLength: 3 })),
    ),
    { maxLength: 4, selector: ([key]) => key },
  )

/** the details (gRPC-Web: the message) of a status other than OK: non-ASCII, `%` and control characters among them */
export const STATUS_DETAILS = [
  'plain details',
  'café ✓ — non-ASCII details',
  '100% sure: percent signs %41 and %',
  'line one\nline two\ttabbed',
  '',
  '日本語のエラー',
]

/**
 * What the proxy adds to a call's request metadata (docs/reference.md "Headers"), and what it rightly sends
 * otherwise: the request id is each leg's own, and `grpc-timeout` is what is left of the deadline at the
 * forward ("HTTP/2 and gRPC").
 */
export const PROXY_REQUEST_KEYS: ReadonlySet<string> = new Set([
  'x-nhi-identity',
  'x-nhi-kind',
  'x-nhi-source',
  'x-nhi-verified',
  'traceparent',
  'tracestate',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
  'grpc-timeout',
])

// ---- the callers ------------------------------------------------------------------------------------------

export type Credential = 'jwt' | 'apikey' | 'none'

/**
 * Who makes the calls: a JWT from a JWKS served here (its azp `billing`, attributed to `svc/billing`), the
 * api key `apiKey` (attributed to `ci-runner`), or nobody. `config`: the sidecar settings that tell them
 * apart; `token`: the JWT, issued by `issuer` for `audience`.
 */
export async function startCallers(t: Test, o: { issuer: string; audience: string; apiKey: string }) {
  const key = await createSigningKey('k1')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const config = {
    jwt: { issuers: [{ issuer: o.issuer, jwksUri: jwks.jwksUri, audiences: [o.audience] }] },
    identities: [
      {
        name: 'svc/{client}',
        kind: 'service',
        match: { jwt: { issuer: o.issuer, claims: { azp: '{client}' } } },
      },
    ],
    apiKeys: {
      keys: [
        { name: 'ci-runner', kind: 'service', sha256: createHash('sha256').update(o.apiKey).digest('hex') },
      ],
    },
  }
  const token = await mintToken(key, { azp: 'billing' }, { issuer: o.issuer, audience: o.audience })
  return { config, token }
}

// ---- the audit trail --------------------------------------------------------------------------------------

export type AuditLine = Record<string, unknown>

/** the audit trail in `file` once it has `n` lines: its text, and its lines parsed */
export function auditLines(file: string, n: number, what: string) {
  return eventually(
    async () => {
      const text = await readFile(file, 'utf8').catch(() => '')
      const all = text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as AuditLine)
      // thrown, not undefined: a wait that times out then says how far it got
      if (all.length < n) throw new Error(`${all.length} of ${n} lines`)
      return { text, all }
    },
    { what, timeoutMs: 20_000 },
  )
}

/** the one audit line of each call of `ids`, by request id; `faults`: each call with none, or with several */
export function oneLineEach(lines: readonly AuditLine[], ids: Iterable<string>) {
  const byId = new Map<string, AuditLine[]>()
  for (const l of lines) byId.set(String(l['request_id']), [...(byId.get(String(l['request_id'])) ?? []), l])
  const lineOf = new Map<string, AuditLine>()
  const faults: string[] = []
  for (const id of ids) {
    const found = byId.get(id) ?? []
    if (found.length === 1) lineOf.set(id, found[0]!)
    else faults.push(`${id}: ${found.length} lines`)
  }
  return { lineOf, faults }
}

/**
 * What is wrong with the audit line `l` of call `id` whatever its outcome: it names the method's `path`, no
 * upstream error, and the identity of its caller (startCallers).
 */
export function callAuditFaults(id: string, l: AuditLine, path: string, credential: Credential): string[] {
  const faults: string[] = []
  if (l['path'] !== path) faults.push(`${id}: path ${l['path']}`)
  if (l['upstream_error'] !== undefined) faults.push(`${id}: upstream_error ${l['upstream_error']}`)
  const identity =
    credential === 'jwt'
      ? ['svc/billing', 'jwt', true]
      : credential === 'apikey'
        ? ['ci-runner', 'apikey', true]
        : [l['identity'], 'useragent', false]
  const got = [l['identity'], l['source'], l['verified']]
  if (JSON.stringify(got) !== JSON.stringify(identity))
    faults.push(`${id}: identity ${JSON.stringify(got)}, expected ${JSON.stringify(identity)}`)
  return faults
}
