// A real JWKS served over HTTP, with key rotation, and a token minter.
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose'
import type { Test } from 'tap'
import { startUpstream, type TestUpstream } from './upstream.ts'

export interface SigningKey {
  kid: string
  alg: string
  privateKey: CryptoKey
  publicJwk: JWK
}

export async function createSigningKey(kid: string, alg = 'RS256'): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' }
  return { kid, alg, privateKey, publicJwk }
}

export interface JwksServer {
  server: Server
  /** base URL, e.g. http://127.0.0.1:1234 — also the issuer when discovery is used */
  url: string
  jwksUri: string
  keys: SigningKey[]
  /** number of GETs of the key set so far */
  hits: number
  /** make the key set endpoint fail (status) or serve junk ('junk') or hang ('hang') */
  fault?: number | 'junk' | 'hang'
  /** extra headers of a key-set answer (Cache-Control, Age) */
  headers?: Record<string, string>
  /** the key set is answered this many ms after it was asked for (after `held` settled): a slow identity provider */
  delayMs?: number
  /** the key set is not answered before this settles (a fetch in flight for as long as the test needs) */
  held?: Promise<unknown>
  setKeys(keys: SigningKey[]): void
  close(): Promise<void>
}

/** Serves /jwks.json and /.well-known/openid-configuration (issuer = url). */
export async function startJwksServer(initial: SigningKey[]): Promise<JwksServer> {
  const state: JwksServer = {
    server: undefined as unknown as Server,
    url: '',
    jwksUri: '',
    keys: initial,
    hits: 0,
    setKeys(keys) {
      state.keys = keys
    },
    close: () =>
      new Promise<void>((resolve) => {
        state.server.closeAllConnections()
        state.server.close(() => resolve())
      }),
  }
  state.server = createServer((req, res) => {
    if (req.url === '/.well-known/openid-configuration') {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ issuer: state.url, jwks_uri: state.jwksUri }))
      return
    }
    if (req.url === '/jwks.json') {
      state.hits++
      if (state.fault === 'hang') return
      if (state.fault === 'junk') {
        res.end('{"keys": [ not json')
        return
      }
      if (typeof state.fault === 'number') {
        res.statusCode = state.fault
        res.end('down')
        return
      }
      const send = () => {
        res.setHeader('content-type', 'application/json')
        for (const [name, value] of Object.entries(state.headers ?? {})) res.setHeader(name, value)
        res.end(JSON.stringify({ keys: state.keys.map((k) => k.publicJwk) }))
      }
      const later = () => {
        if (state.delayMs === undefined) {
          send()
          return
        }
        const timer = setTimeout(send, state.delayMs)
        res.on('close', () => clearTimeout(timer))
      }
      if (state.held === undefined) later()
      else void state.held.then(later)
      return
    }
    res.statusCode = 404
    res.end()
  })
  state.server.listen(0, '127.0.0.1')
  await once(state.server, 'listening')
  const port = (state.server.address() as AddressInfo).port
  state.url = `http://127.0.0.1:${port}`
  state.jwksUri = `${state.url}/jwks.json`
  return state
}

export interface MintOptions {
  issuer: string
  audience?: string | string[]
  subject?: string
  /** seconds from now; negative → already expired */
  expiresIn?: number
  notBefore?: number
  header?: Record<string, unknown>
}

/**
 * `token` with the first character of its signature replaced by another. That character's six bits all belong
 * to the signature (unused bits sit in the last one), so the signature always decodes to other bytes; swapping
 * characters a signature may not hold, or its last characters, can give back the token itself.
 */
export function alterSignature(token: string): string {
  const at = token.lastIndexOf('.') + 1
  const c = token[at]
  if (at === 0 || c === undefined) throw new Error('a token with a signature to alter')
  return `${token.slice(0, at)}${c === 'A' ? 'B' : 'A'}${token.slice(at + 1)}`
}

export async function mintToken(key: SigningKey, claims: JWTPayload, opts: MintOptions): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  const jwt = new SignJWT({ ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...opts.header })
    .setIssuer(opts.issuer)
    .setIssuedAt(now)
    .setExpirationTime(now + (opts.expiresIn ?? 3600))
  if (opts.audience) jwt.setAudience(opts.audience)
  if (opts.subject) jwt.setSubject(opts.subject)
  if (opts.notBefore !== undefined) jwt.setNotBefore(now + opts.notBefore)
  return jwt.sign(key.privateKey)
}

/**
 * What an end-to-end test of JWT attribution stands a sidecar in front of: a real upstream, and a real JWKS
 * server publishing one new signing key `kid`. Both are closed when `t` ends.
 */
export async function startUpstreamAndJwks(
  t: Test,
  kid = 'k1',
): Promise<{ upstream: TestUpstream; key: SigningKey; jwks: JwksServer }> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createSigningKey(kid)
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  return { upstream, key, jwks }
}
