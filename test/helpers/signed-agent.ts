// A Web Bot Auth agent for tests: an Ed25519 key pair, its key directory served over HTTP
// (`/.well-known/http-message-signatures-directory`), and request signing with the `web-bot-auth` package's
// own signer, so the proxy's verification is checked against an independent implementation; and a sidecar
// that trusts it.
import { createPrivateKey, generateKeyPairSync, sign } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Test } from 'tap'
import { signatureHeaders } from 'web-bot-auth'
import { Ed25519Signer } from 'web-bot-auth/crypto'
import { startTestSidecar, type TestSidecar } from './sidecar.ts'
import { startUpstream, type TestUpstream } from './upstream.ts'

export const DIRECTORY_PATH = '/.well-known/http-message-signatures-directory'

export interface AgentKey {
  /** JWK thumbprint: the Web Bot Auth keyid */
  keyid: string
  publicJwk: JsonWebKey
  /** for signing with another library than web-bot-auth */
  privateJwk: import('node:crypto').JsonWebKey
  signer: Ed25519Signer
}

export async function createAgentKey(): Promise<AgentKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const privateJwk = privateKey.export({ format: 'jwk' })
  const signer = await Ed25519Signer.fromJWK(privateJwk)
  return { keyid: signer.keyid, publicJwk: publicKey.export({ format: 'jwk' }), privateJwk, signer }
}

/** What a directory publishes of a key: a key of another algorithm than AgentKey's will do */
export type PublishedKey = Pick<AgentKey, 'publicJwk'>

export interface KeyDirectoryServer {
  /** origin, e.g. http://127.0.0.1:1234: what a Signature-Agent header names */
  origin: string
  /** the directory URL */
  url: string
  keys: PublishedKey[]
  /** GETs of the directory so far */
  hits: number
  /** answer this status instead of the directory */
  fault?: number
  /** take requests and answer none of them (a server that hangs) */
  hang?: boolean
  /** requests taken while hanging whose connection is still open */
  hanging: number
  close(): Promise<void>
}

export async function startKeyDirectory(keys: PublishedKey[]): Promise<KeyDirectoryServer> {
  let server: Server | undefined
  const state: KeyDirectoryServer = {
    origin: '',
    url: '',
    keys,
    hits: 0,
    hanging: 0,
    close: () =>
      new Promise<void>((resolve) => {
        server!.closeAllConnections()
        server!.close(() => resolve())
      }),
  }
  server = createServer((req, res) => {
    if (req.url !== DIRECTORY_PATH) {
      res.statusCode = 404
      res.end()
      return
    }
    state.hits++
    if (state.hang) {
      state.hanging++
      res.on('close', () => state.hanging--)
      return
    }
    if (state.fault !== undefined) {
      res.statusCode = state.fault
      res.end('down')
      return
    }
    res.setHeader('content-type', 'application/http-message-signatures-directory+json')
    res.end(JSON.stringify({ keys: state.keys.map((k) => k.publicJwk) }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  state.origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  state.url = `${state.origin}${DIRECTORY_PATH}`
  return state
}

export interface SignedAgentSidecar {
  upstream: TestUpstream
  key: AgentKey
  directory: KeyDirectoryServer
  /** the sidecar's config with other signedAgents settings (by default, its own): for a reload or another sidecar */
  config: (signedAgents?: Record<string, unknown>) => Record<string, unknown>
  sidecar: TestSidecar
}

/**
 * A sidecar of service `shop` in front of an echoing upstream, trusting one agent key's directory as
 * `agent.example`: `signedAgents` its other signedAgents settings, `more` the rest of its config. The
 * upstream and the directory are closed at the end of the test.
 */
export async function startSignedAgentSidecar(
  t: Test,
  signedAgents: Record<string, unknown> = {},
  more: Record<string, unknown> = {},
): Promise<SignedAgentSidecar> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createAgentKey()
  const directory = await startKeyDirectory([key])
  t.teardown(() => directory.close())
  const config = (settings: Record<string, unknown> = signedAgents) => ({
    service: 'shop',
    upstream: upstream.url,
    ...more,
    signedAgents: { directories: [{ url: directory.url, name: 'agent.example' }], ...settings },
  })
  const sidecar = await startTestSidecar(t, config())
  return { upstream, key, directory, config, sidecar }
}

export interface SignOptions {
  /** the Signature-Agent header value; omitted when undefined */
  agent?: string
  /** unix ms; default now */
  created?: number
  /** lifetime in ms; default 60 s */
  lifetimeMs?: number
}

/** Signature, Signature-Input (and Signature-Agent) headers for a request to `url`, as web-bot-auth signs. */
export async function signRequest(
  key: AgentKey,
  url: string,
  opts: SignOptions = {},
): Promise<Record<string, string>> {
  const headers: Record<string, string> = {}
  if (opts.agent !== undefined) headers['signature-agent'] = opts.agent
  const created = opts.created ?? Date.now()
  const signed = await signatureHeaders({ method: 'GET', url, headers }, key.signer, {
    created: new Date(created),
    expires: new Date(created + (opts.lifetimeMs ?? 60_000)),
  })
  return { ...headers, signature: signed.Signature, 'signature-input': signed['Signature-Input'] }
}

/**
 * Signature and Signature-Input over `@authority` alone, with the parameters written exactly as given
 * (`;created=…;expires=…;…`) and signed with node:crypto: for parameter spellings no signer library writes.
 */
export function signWithParams(key: AgentKey, url: string, params: string): Record<string, string> {
  const input = `("@authority")${params}`
  // @authority as RFC 9421 §2.2.3 derives it: lower-case host, default port left out (what URL#host gives)
  const base = `"@authority": ${new URL(url).host}\n"@signature-params": ${input}`
  const signature = sign(null, Buffer.from(base), createPrivateKey({ key: key.privateJwk, format: 'jwk' }))
  return { 'signature-input': `sig1=${input}`, signature: `sig1=:${signature.toString('base64')}:` }
}
