// The demo's identity providers: one local JWKS endpoint standing in for a Kubernetes API server, GitHub
// Actions and an Auth0 tenant, with tokens shaped like each one's real tokens.
import { createHash, randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose'
import { DemoSignedAgent, DIRECTORY_PATH } from './signed-agent.ts'

export const ISSUERS = {
  kubernetes: 'https://kubernetes.default.svc.cluster.local',
  github: 'https://token.actions.githubusercontent.com',
  auth0: 'https://acme.eu.auth0.com/',
} as const
export const AUDIENCE = 'checkout'
export const SAMPLES = [
  'kubernetes',
  'github',
  'auth0-client',
  'auth0-user',
  'delegated',
  'expired',
  'unknown-kid',
  'bound',
]

interface Key {
  kid: string
  privateKey: CryptoKey
  jwk: JWK
}

async function newKey(kid: string): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true })
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } }
}

export class DemoIdp {
  private constructor(
    private readonly server: Server,
    readonly jwksUri: string,
    private readonly key: Key,
    /** a key the JWKS never publishes: tokens signed with it provoke unknown_kid */
    private readonly rogueKey: Key,
    /** a Web Bot Auth agent whose key directory this server publishes */
    readonly agent: DemoSignedAgent,
    /** the agent's origin (its Signature-Agent) and key directory URL */
    readonly agentOrigin: string,
  ) {}

  get directoryUrl(): string {
    return `${this.agentOrigin}${DIRECTORY_PATH}`
  }

  /** base URL of the sample-token endpoint (GET /tokens/<name>) */
  tokensUrl = ''

  static async start(host = '127.0.0.1', port = 0): Promise<DemoIdp> {
    const key = await newKey('demo-2026')
    const rogue = await newKey('rogue-1')
    const body = JSON.stringify({ keys: [key.jwk] })
    const agent = await DemoSignedAgent.create()
    let idp: DemoIdp | undefined
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://demo')
      if (url.pathname === '/openid/v1/jwks') {
        res.setHeader('content-type', 'application/json')
        res.end(body)
        return
      }
      if (url.pathname === DIRECTORY_PATH) {
        res.setHeader('content-type', 'application/http-message-signatures-directory+json')
        res.end(agent.directory())
        return
      }
      const mint =
        idp && url.pathname.startsWith('/tokens/')
          ? idp.sample(url.pathname.slice(8), url.searchParams)
          : undefined
      if (!mint) {
        res.statusCode = 404
        res.end(`unknown path; try ${SAMPLES.map((s) => `/tokens/${s}`).join(' ')}\n`)
        return
      }
      mint.then(
        (token) => {
          res.setHeader('content-type', 'text/plain')
          res.end(token)
        },
        () => {
          res.statusCode = 500
          res.end()
        },
      )
    })
    server.listen(port, host)
    await once(server, 'listening')
    const bound = server.address() as AddressInfo
    idp = new DemoIdp(
      server,
      `http://${host}:${bound.port}/openid/v1/jwks`,
      key,
      rogue,
      agent,
      `http://${host}:${bound.port}`,
    )
    idp.tokensUrl = `http://${host}:${bound.port}/tokens`
    return idp
  }

  /** Sample tokens so a person can provoke each identity and anomaly with curl (demo only). */
  private sample(name: string, q: URLSearchParams): Promise<string> | undefined {
    switch (name) {
      case 'kubernetes':
        return this.kubernetes(q.get('ns') ?? 'payments', q.get('sa') ?? 'api', q.get('pod') ?? 'curl-pod')
      case 'github':
        return this.githubActions(q.get('repository') ?? 'acme/nightly-etl', q.get('workflow') ?? 'nightly')
      case 'auth0-client':
        return this.auth0Client(q.get('client') ?? 'reporting-service')
      case 'auth0-user':
        return this.auth0User(q.get('email') ?? 'carol@acme.example')
      case 'delegated':
        return this.delegated(q.get('email') ?? 'carol@acme.example', q.get('actor') ?? 'demo-mail-agent')
      case 'expired':
        return this.expired()
      case 'unknown-kid':
        return this.unknownKid()
      case 'bound':
        return this.kubernetes('inventory', 'sync', 'inventory-sync-0', {
          cnfCertDer: Buffer.from('a certificate nobody presents'),
        })
      default:
        return undefined
    }
  }

  private sign(iss: string, claims: JWTPayload, ttlSeconds: number, key = this.key): Promise<string> {
    const now = Math.floor(Date.now() / 1000)
    return new SignJWT({ ...claims, jti: randomUUID() })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
      .setIssuer(iss)
      .setAudience(AUDIENCE)
      .setIssuedAt(now - 5)
      .setExpirationTime(now + ttlSeconds)
      .sign(key.privateKey)
  }

  /** projected service-account token (kubernetes.io claims, warnafter before exp) */
  kubernetes(ns: string, sa: string, pod: string, opts: { cnfCertDer?: Buffer } = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000)
    const claims: JWTPayload = {
      sub: `system:serviceaccount:${ns}:${sa}`,
      'kubernetes.io': {
        namespace: ns,
        serviceaccount: { name: sa, uid: randomUUID() },
        pod: { name: pod, uid: randomUUID() },
        node: { name: 'node-a1', uid: randomUUID() },
        warnafter: now + 3000,
      },
      nbf: now - 5,
    }
    if (opts.cnfCertDer) {
      claims['cnf'] = { 'x5t#S256': createHash('sha256').update(opts.cnfCertDer).digest('base64url') }
    }
    return this.sign(ISSUERS.kubernetes, claims, 3600)
  }

  /** GitHub Actions OIDC token for a scheduled workflow */
  githubActions(repository: string, workflow: string): Promise<string> {
    const [owner] = repository.split('/')
    return this.sign(
      ISSUERS.github,
      {
        sub: `repo:${repository}:ref:refs/heads/main`,
        repository,
        repository_owner: owner,
        workflow,
        ref: 'refs/heads/main',
        event_name: 'schedule',
        run_id: String(9_000_000_000 + Math.floor(Math.random() * 1e6)),
        run_attempt: '1',
        actor: 'github-actions[bot]',
        job_workflow_ref: `${repository}/.github/workflows/nightly.yml@refs/heads/main`,
        runner_environment: 'github-hosted',
      },
      600,
    )
  }

  /** Auth0 machine-to-machine (client credentials) token */
  auth0Client(clientId: string): Promise<string> {
    return this.sign(
      ISSUERS.auth0,
      { sub: `${clientId}@clients`, azp: clientId, gty: 'client-credentials', scope: 'read:reports' },
      86_400,
    )
  }

  /** Auth0 token of a person who logged in through the browser */
  auth0User(email: string): Promise<string> {
    return this.sign(
      ISSUERS.auth0,
      {
        sub: `auth0|${createHash('sha1').update(email).digest('hex').slice(0, 24)}`,
        email,
        email_verified: true,
        azp: 'spa-web',
        scope: 'openid profile',
      },
      7200,
    )
  }

  /** a person's token exchanged (RFC 8693) for an AI agent acting on their behalf: `act` names the agent */
  delegated(email: string, actor: string): Promise<string> {
    return this.sign(
      ISSUERS.auth0,
      {
        sub: `auth0|${createHash('sha1').update(email).digest('hex').slice(0, 24)}`,
        email,
        email_verified: true,
        azp: 'spa-web',
        scope: 'read:orders',
        act: { sub: actor },
      },
      3600,
    )
  }

  expired(): Promise<string> {
    return this.sign(ISSUERS.auth0, { sub: 'legacy-cron@clients', gty: 'client-credentials' }, -600)
  }

  unknownKid(): Promise<string> {
    return this.sign(ISSUERS.kubernetes, { sub: 'system:serviceaccount:attacker:probe' }, 600, this.rogueKey)
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections()
      this.server.close(() => resolve())
    })
  }
}
