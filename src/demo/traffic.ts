// Synthetic callers for the demo: each scenario is one kind of real client sending real HTTP(S) requests
// through the proxy, with the credentials such a client really carries.
import { X509Certificate } from 'node:crypto'
import { Agent, type Dispatcher, request } from 'undici'
import { BILLING_EXPORT_KEY } from './config.ts'
import type { DemoIdp } from './idp.ts'
import { caCert, inventoryCert, inventoryKey } from './pki.ts'

const UA = {
  chrome:
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  firefox: 'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0',
  safariIphone:
    'Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1',
  googlebot: 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
  bingbot: 'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)',
  gptbot:
    'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)',
  claudebot:
    'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)',
  chatgptUser:
    'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot',
  perplexity:
    'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0; +https://perplexity.ai/perplexitybot)',
  kubeProbe: 'kube-probe/1.31',
  curl: 'curl/8.5.0',
  pythonRequests: 'python-requests/2.32.3',
  goHttp: 'Go-http-client/1.1',
} as const

/** inside Google's published crawler ranges (src/identity/bots/ranges-snapshot.json) */
const GOOGLEBOT_ADDRESS = '66.249.66.1'

interface Tokens {
  payments: string
  orders: string
  nightly: string
  reporting: string
  alice: string
  bob: string
  /** alice's token exchanged for an AI agent acting on her behalf (RFC 8693 act) */
  delegated: string
  expired: string
  unknownKid: string
  /** k8s token bound (RFC 8705 cnf) to a certificate the caller does not present */
  bound: string
  /** the same token replayed from several addresses */
  shared: string
}

interface Scenario {
  name?: string
  weight: number
  run(t: Tokens): Promise<unknown>
}

/**
 * A token whose claims were changed after it was signed (its subject swapped for the cluster's admin): the key
 * is known, the signature no longer matches, `bad_signature`.
 */
function tampered(token: string): string {
  const [header = '', payload = '', signature = ''] = token.split('.')
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>
  claims['sub'] = 'system:serviceaccount:kube-system:admin'
  return `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${signature}`
}

export interface TrafficOptions {
  proxyUrl: string
  httpsUrl?: string
  idp: DemoIdp
  rate: number
}

export class DemoTraffic {
  private tokens!: Tokens
  private timer: NodeJS.Timeout | undefined
  private refresh: NodeJS.Timeout | undefined
  private inFlight = 0
  private tick = 0
  private readonly local: Agent
  private readonly mesh: Agent
  private readonly replay: Agent[]
  private readonly mtls: Agent | undefined
  private readonly scenarios: Scenario[]
  private readonly totalWeight: number
  sent = 0
  errors = 0

  constructor(private readonly opts: TrafficOptions) {
    this.local = new Agent({ connections: 32 })
    this.mesh = new Agent({ localAddress: '127.0.0.2', connections: 4 })
    this.replay = ['127.0.0.3', '127.0.0.4', '127.0.0.5', '127.0.0.6'].map(
      (localAddress) => new Agent({ localAddress, connections: 1 }),
    )
    this.mtls = opts.httpsUrl
      ? new Agent({
          connect: { cert: inventoryCert, key: inventoryKey, ca: caCert, servername: 'localhost' },
        })
      : undefined
    this.scenarios = this.buildScenarios()
    this.totalWeight = this.scenarios.reduce((s, x) => s + x.weight, 0)
  }

  private get(
    path: string,
    headers: Record<string, string>,
    dispatcher: Dispatcher = this.local,
    base = this.opts.proxyUrl,
  ) {
    return this.send('GET', path, headers, dispatcher, base)
  }

  private async send(
    method: 'GET' | 'POST',
    path: string,
    headers: Record<string, string>,
    dispatcher: Dispatcher = this.local,
    base = this.opts.proxyUrl,
    body?: string,
  ) {
    this.sent++
    const res = await request(`${base}${path}`, { method, headers, dispatcher, body })
    await res.body.dump()
    return res.statusCode
  }

  /** A request signed by the demo's Web Bot Auth agent; `replay` sends the last signature again. */
  private lastSignature: Record<string, string> | undefined
  private async signed(path: string, replay = false) {
    const idp = this.opts.idp
    const url = `${this.opts.proxyUrl}${path}`
    const signature =
      replay && this.lastSignature ? this.lastSignature : await idp.agent.sign(url, idp.agentOrigin)
    this.lastSignature = signature
    return this.get(path, { 'user-agent': 'DemoAgent/1.0 (+https://agent.demo)', ...signature })
  }

  private buildScenarios(): Scenario[] {
    const id = () => Math.floor(Math.random() * 9000) + 1000
    const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
    const s: Scenario[] = [
      // people
      { weight: 8, run: () => this.get(`/docs/page-${id() % 20}`, { 'user-agent': UA.chrome }) },
      { weight: 3, run: () => this.get('/docs/pricing', { 'user-agent': UA.safariIphone }) },
      {
        weight: 5,
        run: (t) => this.get(`/api/v1/orders/${id()}`, { 'user-agent': UA.firefox, ...bearer(t.alice) }),
      },
      { weight: 1, run: (t) => this.get('/admin/settings', { 'user-agent': UA.chrome, ...bearer(t.bob) }) },
      // services (kubernetes projected tokens, an Auth0 M2M client)
      {
        weight: 10,
        run: (t) =>
          this.send(
            'POST',
            '/api/v1/orders',
            { 'user-agent': UA.goHttp, 'content-type': 'application/json', ...bearer(t.payments) },
            this.local,
            this.opts.proxyUrl,
            '{"sku":"A-1","qty":2}',
          ),
      },
      {
        weight: 8,
        run: (t) => this.get(`/api/v1/orders/${id()}`, { 'user-agent': UA.goHttp, ...bearer(t.orders) }),
      },
      {
        weight: 3,
        run: (t) =>
          this.get('/api/v1/reports/weekly', { 'user-agent': UA.pythonRequests, ...bearer(t.reporting) }),
      },
      // a mesh gateway that terminated mTLS and forwards the client's certificate (trusted proxy 127.0.0.2)
      {
        weight: 4,
        run: () =>
          this.get(
            `/api/v1/orders/${id()}`,
            {
              'user-agent': UA.goHttp,
              'x-forwarded-client-cert':
                'By=spiffe://demo.local/ns/checkout/sa/checkout;Hash=4f6b1c2a;Subject="CN=frontend";URI=spiffe://demo.local/ns/web/sa/frontend',
            },
            this.mesh,
          ),
      },
      // jobs
      {
        weight: 3,
        run: (t) =>
          this.get('/api/v1/reports/export', { 'user-agent': UA.pythonRequests, ...bearer(t.nightly) }),
      },
      {
        weight: 2,
        run: () =>
          this.get('/api/v1/reports/billing', { 'user-agent': UA.curl, 'x-api-key': BILLING_EXPORT_KEY }),
      },
      // crawlers, probes, libraries
      // the real Googlebot, reaching us through the trusted front proxy (127.0.0.2) that names its address
      // (inside Google's published ranges) in X-Forwarded-For: the verified identity googlebot
      {
        weight: 3,
        run: () =>
          this.get(
            `/docs/page-${id() % 50}`,
            { 'user-agent': UA.googlebot, 'x-forwarded-for': GOOGLEBOT_ADDRESS },
            this.mesh,
          ),
      },
      // the same user agent straight from an address outside Google's ranges: ua:googlebot, unverified_claim
      { weight: 5, run: () => this.get(`/docs/page-${id() % 50}`, { 'user-agent': UA.googlebot }) },
      // a spoofer writing Google's address into its own X-Forwarded-For: not a trusted proxy, so not read
      {
        weight: 0.5,
        run: () =>
          this.get('/docs/pricing', { 'user-agent': UA.googlebot, 'x-forwarded-for': GOOGLEBOT_ADDRESS }),
      },
      { weight: 2, run: () => this.get(`/docs/page-${id() % 50}`, { 'user-agent': UA.bingbot }) },
      { weight: 4, run: () => this.get('/healthz', { 'user-agent': UA.kubeProbe }) },
      { weight: 1, run: () => this.get('/api/v1/inventory', { 'user-agent': UA.curl }) },
      // AI agents
      { weight: 4, run: () => this.get(`/docs/page-${id() % 50}`, { 'user-agent': UA.gptbot }) },
      { weight: 3, run: () => this.get(`/docs/page-${id() % 50}`, { 'user-agent': UA.claudebot }) },
      { weight: 2, run: () => this.get('/docs/pricing', { 'user-agent': UA.chatgptUser }) },
      { weight: 1, run: () => this.get('/admin/settings', { 'user-agent': UA.perplexity }) },
      // a signed agent (Web Bot Auth): verified against its published key directory
      { weight: 3, run: () => this.signed(`/docs/page-${id() % 50}`) },
      // an AI agent acting on behalf of alice: her identity, with the agent as actor
      {
        weight: 3,
        run: (t) =>
          this.get(`/api/v1/orders/${id()}`, { 'user-agent': 'demo-mail-agent/0.3', ...bearer(t.delegated) }),
      },
      // trouble, so every anomaly and failure reason has a series
      {
        weight: 0.5,
        run: (t) => this.get('/api/v1/inventory', { 'user-agent': UA.goHttp, ...bearer(t.expired) }),
      },
      {
        weight: 0.3,
        run: (t) => this.get('/api/v1/inventory', { 'user-agent': UA.curl, ...bearer(t.unknownKid) }),
      },
      // a token edited after signing (forged): bad_signature
      {
        weight: 0.3,
        run: (t) => this.get('/api/v1/inventory', { 'user-agent': UA.curl, ...bearer(tampered(t.shared)) }),
      },
      {
        weight: 0.3,
        run: () => this.get('/api/v1/orders', { 'user-agent': UA.curl, 'x-nhi-identity': 'admin' }),
      },
      // a captured signature sent again: signature_replayed
      { weight: 0.3, run: () => this.signed('/docs/pricing', true) },
      // an impostor naming itself after the export job's api key: shows up as ua:billing-export
      {
        weight: 0.3,
        run: () => this.get('/api/v1/reports/billing', { 'user-agent': 'billing-export/1.0' }),
      },
      {
        weight: 0.3,
        run: () =>
          this.get('/api/v1/orders', {
            'user-agent': UA.curl,
            'x-forwarded-client-cert': 'URI=spiffe://demo.local/ns/ops/sa/root',
          }),
      },
      {
        weight: 0.3,
        run: () =>
          this.get('/api/v1/reports/billing', { 'user-agent': UA.curl, 'x-api-key': 'guessed-key-123' }),
      },
      {
        name: 'token-shared',
        weight: 0.3,
        run: (t) => {
          const i = this.tick++ % this.replay.length
          return this.get(
            '/api/v1/inventory',
            { 'user-agent': UA.goHttp, ...bearer(t.shared) },
            this.replay[i],
          )
        },
      },
    ]
    if (this.mtls && this.opts.httpsUrl) {
      const mtls = this.mtls
      const base = this.opts.httpsUrl
      s.push({ weight: 6, run: () => this.get('/api/v1/inventory', { 'user-agent': UA.goHttp }, mtls, base) })
      // cert says inventory/sync, token says payments/api: identity_mismatch; bound token: binding_mismatch
      s.push({
        weight: 0.3,
        run: (t) =>
          this.get('/api/v1/inventory', { 'user-agent': UA.goHttp, ...bearer(t.payments) }, mtls, base),
      })
      s.push({
        weight: 0.3,
        run: (t) =>
          this.get('/api/v1/inventory', { 'user-agent': UA.goHttp, ...bearer(t.bound) }, mtls, base),
      })
    }
    return s
  }

  private async mintTokens(): Promise<void> {
    const idp = this.opts.idp
    const otherCert = new X509Certificate(caCert).raw
    const [payments, orders, nightly, reporting, alice, bob, expired, unknownKid, bound, shared, delegated] =
      await Promise.all([
        idp.kubernetes('payments', 'api', 'payments-api-7d9f8'),
        idp.kubernetes('orders', 'worker', 'orders-worker-5c2x1'),
        idp.githubActions('acme/nightly-etl', 'nightly'),
        idp.auth0Client('reporting-service'),
        idp.auth0User('alice@acme.example'),
        idp.auth0User('bob@acme.example'),
        idp.expired(),
        idp.unknownKid(),
        idp.kubernetes('inventory', 'sync', 'inventory-sync-0', { cnfCertDer: otherCert }),
        idp.kubernetes('legacy', 'batch', 'legacy-batch-1'),
        idp.delegated('alice@acme.example', 'demo-mail-agent'),
      ])
    this.tokens = {
      payments,
      orders,
      nightly,
      reporting,
      alice,
      bob,
      delegated,
      expired,
      unknownKid,
      bound,
      shared,
    }
  }

  private pick(): Scenario {
    let r = Math.random() * this.totalWeight
    for (const s of this.scenarios) {
      r -= s.weight
      if (r <= 0) return s
    }
    return this.scenarios[0]!
  }

  async start(): Promise<void> {
    await this.mintTokens()
    // re-mint before the short-lived (GitHub: 10 min) tokens expire
    this.refresh = setInterval(() => void this.mintTokens().catch(() => {}), 5 * 60_000)
    const interval = Math.max(1, Math.round(1000 / this.opts.rate))
    this.timer = setInterval(() => {
      if (this.inFlight >= 64) return
      this.inFlight++
      this.pick()
        .run(this.tokens)
        .catch(() => {
          this.errors++
        })
        .finally(() => {
          this.inFlight--
        })
    }, interval)
  }

  /** one pass over every scenario, so a short run still shows every kind and anomaly */
  async runEveryScenarioOnce(): Promise<void> {
    if (!this.tokens) await this.mintTokens()
    for (const s of this.scenarios) await s.run(this.tokens).catch(() => this.errors++)
    // token sharing needs more distinct peers than the threshold
    const share = this.scenarios.find((x) => x.name === 'token-shared')
    if (share)
      for (let i = 0; i < this.replay.length; i++) await share.run(this.tokens).catch(() => this.errors++)
  }

  async close(): Promise<void> {
    clearInterval(this.timer)
    clearInterval(this.refresh)
    await Promise.all(
      [this.local, this.mesh, this.mtls, ...this.replay].map((a) => a?.close().catch(() => {})),
    )
  }
}
