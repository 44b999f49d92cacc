// JWT verification with node:crypto's synchronous `verify`, making the checks jose's `jwtVerify` makes, in
// its order and with its error classes (so failureCause gives the same reasons). jose still fetches nothing
// here but stays the source of keys: key selection and import are its key set's (createLocalJWKSet), and
// each imported CryptoKey is turned into a KeyObject once. What this saves per never-seen token is
// WebCrypto's asynchronous job (a hop to libuv's thread pool and back, and its argument normalisation),
// about two thirds of jose's verification time on this path. The inline verifier and the verification
// worker both call `verifyJwt`, so the two paths cannot diverge; test/identity/jwt-jws-differential.test.ts
// runs it against jose on the same tokens.
//
// One deliberate difference: a segment must be strict base64url (alphabet A–Z a–z 0–9 - _, no padding, no
// whitespace, no set bit among the last character's unused ones). jose decodes with the platform's forgiving
// base64 (atob), which accepts padding, whitespace and any unused bits; such tokens never verify here, and
// refusing them as malformed is the stricter reading of RFC 7515 (RFC 4648 §3.5).
import { constants, createHmac, verify as cryptoVerify, KeyObject, timingSafeEqual } from 'node:crypto'
import { errors, type FlattenedJWSInput, type JWSHeaderParameters, type JWTPayload } from 'jose'
import { isRecord } from '../../util/is-record.ts'

/** what jose's key-set function (or IssuerKeySet.getKey) resolves to */
export type JwsKey = CryptoKey | Uint8Array
export type JwsKeyResolver = (
  header: JWSHeaderParameters,
  token: FlattenedJWSInput,
) => Promise<JwsKey> | JwsKey

export interface JwtCheckOptions {
  /** the allow-list; jose's `algorithms` */
  algorithms: ReadonlySet<string>
  /** the required `iss` */
  issuer: string
  /** undefined: any audience (no check); [] accepts none */
  audience?: readonly string[] | undefined
  /** seconds */
  clockTolerance: number
  /** unix ms */
  now: number
}

export interface VerifiedJwt {
  payload: JWTPayload
  protectedHeader: JWSHeaderParameters & { alg: string }
}

type Family = 'hmac' | 'rsa' | 'pss' | 'ec' | 'ed'

interface AlgEntry {
  family: Family
  /** digest for node:crypto (null for Ed25519) */
  hash: string | null
  /** WebCrypto algorithm name and parameters the CryptoKey must carry (jose's checkCryptoKey) */
  keyName: string
  keyHash?: string
  namedCurve?: string
  /** RSA-PSS salt length = digest length */
  saltLength?: number
  /** ECDSA: r‖s length in bytes for the curve (ieee-p1363) */
  sigLength?: number
}

// jose's JWS algorithm table, restricted to what a configured issuer may allow here
const ALGS: Record<string, AlgEntry> = {
  HS256: { family: 'hmac', hash: 'sha256', keyName: 'HMAC', keyHash: 'SHA-256' },
  HS384: { family: 'hmac', hash: 'sha384', keyName: 'HMAC', keyHash: 'SHA-384' },
  HS512: { family: 'hmac', hash: 'sha512', keyName: 'HMAC', keyHash: 'SHA-512' },
  RS256: { family: 'rsa', hash: 'sha256', keyName: 'RSASSA-PKCS1-v1_5', keyHash: 'SHA-256' },
  RS384: { family: 'rsa', hash: 'sha384', keyName: 'RSASSA-PKCS1-v1_5', keyHash: 'SHA-384' },
  RS512: { family: 'rsa', hash: 'sha512', keyName: 'RSASSA-PKCS1-v1_5', keyHash: 'SHA-512' },
  PS256: { family: 'pss', hash: 'sha256', keyName: 'RSA-PSS', keyHash: 'SHA-256', saltLength: 32 },
  PS384: { family: 'pss', hash: 'sha384', keyName: 'RSA-PSS', keyHash: 'SHA-384', saltLength: 48 },
  PS512: { family: 'pss', hash: 'sha512', keyName: 'RSA-PSS', keyHash: 'SHA-512', saltLength: 64 },
  ES256: { family: 'ec', hash: 'sha256', keyName: 'ECDSA', namedCurve: 'P-256', sigLength: 64 },
  ES384: { family: 'ec', hash: 'sha384', keyName: 'ECDSA', namedCurve: 'P-384', sigLength: 96 },
  ES512: { family: 'ec', hash: 'sha512', keyName: 'ECDSA', namedCurve: 'P-521', sigLength: 132 },
  EdDSA: { family: 'ed', hash: null, keyName: 'Ed25519' },
  Ed25519: { family: 'ed', hash: null, keyName: 'Ed25519' },
}

const MIN_RSA_BITS = 2048
const BASE64URL = /^[A-Za-z0-9_-]*$/
const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

/** one KeyObject per imported CryptoKey; keys live as long as their key set holds them */
const keyObjects = new WeakMap<CryptoKey, KeyObject>()

/** per segment length % 4: the low bits of the last character that encode nothing (0 and 1 have none) */
const UNUSED_BITS = [0, 0, 0b1111, 0b11]

function decodeSegment(segment: string, label: string, ErrorClass: typeof errors.JWSInvalid): Buffer {
  // length % 4 === 1 cannot be base64 (jose's decoder refuses it too)
  if (segment.length % 4 === 1 || !BASE64URL.test(segment) || !canonicalEnd(segment)) {
    throw new ErrorClass(`Failed to base64url decode the ${label}`)
  }
  return Buffer.from(segment, 'base64url')
}

/**
 * The last character's unused bits are zero. Decoders ignore them, so without this one signature would have
 * up to 16 spellings, each a token string of its own: its own fingerprint (token_shared counts clients per
 * fingerprint) and its own cache entries, from a single stolen token.
 */
function canonicalEnd(segment: string): boolean {
  const unused = UNUSED_BITS[segment.length % 4]!
  if (unused === 0) return true
  const c = segment.charCodeAt(segment.length - 1)
  // - _ a-z A-Z 0-9
  const value = c === 45 ? 62 : c === 95 ? 63 : c >= 97 ? c - 71 : c >= 65 ? c - 65 : c + 4
  return (value & unused) === 0
}

function parseJson(bytes: Buffer): unknown {
  return JSON.parse(strictUtf8.decode(bytes))
}

/** jose's validateCrit for a compact JWS without the `crit` option: only `b64` is understood */
function validateCrit(header: Record<string, unknown>): readonly unknown[] {
  const crit = header['crit']
  if (crit === undefined) return []
  if (
    !Array.isArray(crit) ||
    crit.length === 0 ||
    crit.some((p) => typeof p !== 'string' || p.length === 0)
  ) {
    throw new errors.JWSInvalid(
      '"crit" (Critical) Header Parameter MUST be an array of non-empty strings when present',
    )
  }
  for (const parameter of crit as string[]) {
    if (parameter !== 'b64') {
      throw new errors.JOSENotSupported('Extension Header Parameter is not recognized')
    }
    if (!Object.hasOwn(header, parameter) || header[parameter] === undefined) {
      throw new errors.JWSInvalid('Extension Header Parameter is missing')
    }
  }
  return crit
}

function keyType(key: unknown): string | undefined {
  return (key as { [Symbol.toStringTag]?: string } | null)?.[Symbol.toStringTag]
}

/** jose's prepareKey + checkCryptoKey + checkModulusLength for a resolved key, as a KeyObject (or HMAC bytes) */
function usableKey(alg: string, entry: AlgEntry, key: JwsKey): KeyObject | Uint8Array {
  if (entry.family === 'hmac') {
    if (key instanceof Uint8Array) return key
    throw new TypeError(`Key for the ${alg} algorithm must be a secret`)
  }
  if (keyType(key) !== 'CryptoKey') throw new TypeError(`Key for the ${alg} algorithm must be a CryptoKey`)
  const cryptoKey = key as CryptoKey
  if (cryptoKey.type !== 'public')
    throw new TypeError(`CryptoKey instances must be of type "public" for ${alg}`)
  const algorithm = cryptoKey.algorithm as {
    name: string
    hash?: { name: string }
    namedCurve?: string
    modulusLength?: number
  }
  if (algorithm.name !== entry.keyName) throw new TypeError('CryptoKey does not support this operation')
  if (entry.keyHash && algorithm.hash?.name !== entry.keyHash) {
    throw new TypeError('CryptoKey does not support this operation')
  }
  if (entry.namedCurve && algorithm.namedCurve !== entry.namedCurve) {
    throw new TypeError('CryptoKey does not support this operation')
  }
  if (!cryptoKey.usages.includes('verify')) throw new TypeError('CryptoKey does not support verify')
  if (
    (entry.family === 'rsa' || entry.family === 'pss') &&
    (typeof algorithm.modulusLength !== 'number' || algorithm.modulusLength < MIN_RSA_BITS)
  ) {
    throw new TypeError(`${alg} requires key modulusLength to be 2048 bits or larger`)
  }
  let keyObject = keyObjects.get(cryptoKey)
  if (!keyObject) {
    keyObject = KeyObject.from(cryptoKey)
    keyObjects.set(cryptoKey, keyObject)
  }
  return keyObject
}

function signatureValid(
  entry: AlgEntry,
  key: KeyObject | Uint8Array,
  data: Buffer,
  signature: Buffer,
): boolean {
  switch (entry.family) {
    case 'hmac': {
      const mac = createHmac(entry.hash!, key as Uint8Array)
        .update(data)
        .digest()
      return mac.length === signature.length && timingSafeEqual(mac, signature)
    }
    case 'rsa':
      return cryptoVerify(
        entry.hash,
        data,
        { key: key as KeyObject, padding: constants.RSA_PKCS1_PADDING },
        signature,
      )
    case 'pss':
      return cryptoVerify(
        entry.hash,
        data,
        { key: key as KeyObject, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: entry.saltLength! },
        signature,
      )
    case 'ec':
      // WebCrypto takes r‖s only; DER, or a length that is not the curve's, is not a signature
      if (signature.length !== entry.sigLength) return false
      return cryptoVerify(entry.hash, data, { key: key as KeyObject, dsaEncoding: 'ieee-p1363' }, signature)
    case 'ed':
      return cryptoVerify(null, data, key as KeyObject, signature)
  }
}

/**
 * Verifies a compact JWS JWT like jose's `jwtVerify(token, key, options)` with options { algorithms,
 * issuer, audience, clockTolerance, currentDate }: the same checks in the same order, the same error
 * classes. `key` is a resolver (a jose key set, IssuerKeySet.getKey) or one resolved key.
 */
export async function verifyJwt(
  token: string,
  key: JwsKeyResolver | JwsKey,
  opts: JwtCheckOptions,
): Promise<VerifiedJwt> {
  if (typeof token !== 'string') throw new errors.JWSInvalid('Compact JWS must be a string or Uint8Array')
  const dot = token.indexOf('.')
  const dot2 = dot === -1 ? -1 : token.indexOf('.', dot + 1)
  if (dot === -1 || dot2 === -1 || token.indexOf('.', dot2 + 1) !== -1) {
    throw new errors.JWSInvalid('Invalid Compact JWS')
  }
  const headerSegment = token.slice(0, dot)
  const payloadSegment = token.slice(dot + 1, dot2)
  const signatureSegment = token.slice(dot2 + 1)

  let header: unknown
  try {
    header = parseJson(decodeSegment(headerSegment, 'protected header', errors.JWSInvalid))
  } catch {
    throw new errors.JWSInvalid('JWS Protected Header is invalid')
  }
  if (!isRecord(header)) throw new errors.JWSInvalid('JWS Protected Header is invalid')
  const extensions = validateCrit(header)
  let b64 = true
  if (extensions.includes('b64')) {
    if (typeof header['b64'] !== 'boolean') {
      throw new errors.JWSInvalid('The "b64" (base64url-encode payload) Header Parameter must be a boolean')
    }
    b64 = header['b64']
  }
  const alg = header['alg']
  if (typeof alg !== 'string' || !alg) {
    throw new errors.JWSInvalid('JWS "alg" (Algorithm) Header Parameter missing or invalid')
  }
  if (!opts.algorithms.has(alg)) {
    throw new errors.JOSEAlgNotAllowed('"alg" (Algorithm) Header Parameter value not allowed')
  }
  const resolved =
    typeof key === 'function'
      ? await key(header as JWSHeaderParameters, {
          protected: headerSegment,
          payload: payloadSegment,
          signature: signatureSegment,
        })
      : key
  const entry = ALGS[alg]
  if (!entry) throw new errors.JOSENotSupported('alg is not supported')
  // the signing input is the segments' text; jose refuses one that is not ASCII here
  for (let i = 0; i < payloadSegment.length; i++) {
    if (payloadSegment.charCodeAt(i) > 127)
      throw new errors.JWSInvalid('The payload is not a valid base64url string')
  }
  const signature = decodeSegment(signatureSegment, 'signature', errors.JWSInvalid)
  const keyObject = usableKey(alg, entry, resolved)
  const data = Buffer.from(token.slice(0, dot2), 'latin1')
  let valid = false
  try {
    valid = signatureValid(entry, keyObject, data, signature)
  } catch (cause) {
    throw new errors.JWSSignatureVerificationFailed(undefined, { cause })
  }
  if (!valid) throw new errors.JWSSignatureVerificationFailed()

  // jose reads an unencoded payload as the bytes that were signed, so nothing is decoded before this refusal
  if (!b64) throw new errors.JWTInvalid('JWTs MUST NOT use unencoded payload')
  const payloadBytes = decodeSegment(payloadSegment, 'payload', errors.JWSInvalid)
  let payload: unknown
  try {
    payload = parseJson(payloadBytes)
  } catch {
    throw new errors.JWTInvalid('JWT Claims Set must be a top-level JSON object')
  }
  if (!isRecord(payload)) throw new errors.JWTInvalid('JWT Claims Set must be a top-level JSON object')
  validateClaims(payload, opts)
  return { payload: payload as JWTPayload, protectedHeader: header as VerifiedJwt['protectedHeader'] }
}

function claimFailed(
  payload: Record<string, unknown>,
  claim: string,
  reason: string,
  message: string,
): never {
  throw new errors.JWTClaimValidationFailed(message, payload, claim, reason)
}

function numericDate(payload: Record<string, unknown>, claim: string): number | undefined {
  const value = payload[claim]
  if (value === undefined) return undefined
  if (typeof value !== 'number') claimFailed(payload, claim, 'invalid', `"${claim}" claim must be a number`)
  return value
}

/** jose's validateClaimsSet for the options used here: iss, aud (presence, then value), iat, nbf, exp */
function validateClaims(payload: Record<string, unknown>, opts: JwtCheckOptions): void {
  // jose checks presence in reverse of the order it collects them (aud, then iss): iss first
  if (!Object.hasOwn(payload, 'iss')) claimFailed(payload, 'iss', 'missing', 'missing required "iss" claim')
  if (opts.audience !== undefined && !Object.hasOwn(payload, 'aud')) {
    claimFailed(payload, 'aud', 'missing', 'missing required "aud" claim')
  }
  if (payload['iss'] !== opts.issuer)
    claimFailed(payload, 'iss', 'check_failed', 'unexpected "iss" claim value')
  if (opts.audience !== undefined && !audienceAccepted(payload['aud'], opts.audience)) {
    claimFailed(payload, 'aud', 'check_failed', 'unexpected "aud" claim value')
  }
  const tolerance = opts.clockTolerance
  const now = Math.floor(opts.now / 1000)
  numericDate(payload, 'iat')
  const nbf = numericDate(payload, 'nbf')
  if (nbf !== undefined && nbf > now + tolerance) {
    claimFailed(payload, 'nbf', 'check_failed', '"nbf" claim timestamp check failed')
  }
  const exp = numericDate(payload, 'exp')
  if (exp !== undefined && exp <= now - tolerance) {
    throw new errors.JWTExpired('"exp" claim timestamp check failed', payload, 'exp', 'check_failed')
  }
}

function audienceAccepted(aud: unknown, accepted: readonly string[]): boolean {
  if (typeof aud === 'string') return accepted.includes(aud)
  if (Array.isArray(aud)) return accepted.some((a) => aud.includes(a))
  return false
}

/**
 * verifyJwt with a key set, trying each candidate when the token has no kid and several keys fit its alg
 * (jose's JWKSMultipleMatchingKeys, iterable over those keys): the first key that verifies wins, and when
 * none does the multiple-keys error stands. The inline verifier and the verification worker share this loop.
 */
export async function verifyJwtWithKeySet(
  token: string,
  keys: JwsKeyResolver,
  opts: JwtCheckOptions,
): Promise<VerifiedJwt> {
  try {
    return await verifyJwt(token, keys, opts)
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err
    for await (const key of err as unknown as AsyncIterable<JwsKey>) {
      try {
        return await verifyJwt(token, key, opts)
      } catch (inner) {
        if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner
      }
    }
    throw err
  }
}
