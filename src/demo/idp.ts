// The demo's identity providers: one local JWKS endpoint standing in for a Kubernetes API server, GitHub
// Actions and an Auth0 tenant, with tokens shaped like each one's real tokens.
import { createHash, randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose'

export const ISSUERS = {
  kubernetes: 'https://kubernetes.default.svc.cluster.local',
  github: 'https://token.actions.githubusercontent.com',
  auth0: 'https://acme.eu.auth0.com/',
} as const
export const AUDIENCE = 'checkout'

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
  ) {}

  static async start(host = '127.0.0.1'): Promise<DemoIdp> {
    const key = await newKey('demo-2026')
    const rogue = await newKey('rogue-1')
    const body = JSON.stringify({ keys: [key.jwk] })
    const server = createServer((req, res) => {
      if (req.url === '/openid/v1/jwks') {
        res.setHeader('content-type', 'application/json')
        res.end(body)
      } else {
        res.statusCode = 404
        res.end()
      }
    })
    server.listen(0, host)
    await once(server, 'listening')
    const { port } = server.address() as AddressInfo
    return new DemoIdp(server, `http://${host}:${port}/openid/v1/jwks`, key, rogue)
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
