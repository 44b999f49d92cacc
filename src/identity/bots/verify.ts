// Verified bots: a user agent claiming a well-known crawler operator is verified only when the address it
// comes from is inside the operator's published IP ranges for the product it is named after (or, when
// enabled, passes reverse-then-forward DNS in a domain documented for that product). A claim from elsewhere is an `unverified_claim` anomaly; one whose
// reverse DNS lookup is still on its way is counted when the lookup concludes unverified (the request is
// answered by then). Ranges start from the snapshot shipped with the release and are refreshed from the
// configured URLs with the JWKS fetcher's rules: the last good file keeps serving through failures, a failed
// fetch is retried sooner than the regular refresh.
import type { Config } from '../../config/schema.ts'
import type { ConnectionInfo, EvidenceSet, RequestInfo, UserAgentEvidence } from '../../types.ts'
import type { CidrSet } from '../../util/cidr.ts'
import type { AnomalyObserver } from '../anomalies.ts'
import { requestClient, trustedProxySet } from '../client-address.ts'
import { describeFetchError, fetchJsonDocument } from '../jwt/jwks.ts'
import { evidenceOf, replaceEvidence } from '../sources/source.ts'
import { claimedOperators, operatorVouchesFor } from './claims.ts'
import { DnsVerifier, dnsDomains } from './dns.ts'
import {
  OperatorRanges,
  parseRangeDocument,
  type RangeFile,
  type RangeProducts,
  type RangeSource,
  rangeFileProducts,
  SHIPPED_RANGE_FILES,
} from './ranges.ts'

export type BotClaimResult = 'verified' | 'unverified_claim' | 'unknown'

type VerifyConfig = Config['bots']['verify']

export interface BotRangesObserver {
  /** after every fetch of one range file; `error` is safe to log (no query string, no credentials) */
  refreshed(
    operator: string,
    url: string,
    result: 'success' | 'failure',
    prefixes: number,
    error?: string,
  ): void
}

export interface BotVerifierOptions {
  observer?: BotRangesObserver
  /** counts the claims found false once their request was answered (its DNS lookup concluded later) */
  anomalies?: AnomalyObserver
}

/** A range file may be this large; the largest published one is some 30 KiB. */
const MAX_RANGE_FILE_BYTES = 2 * 1024 * 1024

export class BotVerifier {
  private readonly cfg: VerifyConfig
  private readonly trusted: CidrSet
  private readonly observer: BotRangesObserver | undefined
  private readonly dns: DnsVerifier | undefined
  /** last good prefixes per range file URL, with the operator and products they vouch for */
  private readonly files = new Map<string, RangeFile>()
  /** what each configured file vouches for, known before its first fetch */
  private readonly configured = new Map<string, RangeProducts>()
  /**
   * compiled on first use, and again after a refresh: the shipped snapshot alone is some 600 prefixes, ≈ 15 ms
   * of validating and building block lists that a start should not spend before it listens
   */
  private compiled: OperatorRanges | undefined
  private readonly timers = new Set<NodeJS.Timeout>()
  private closed = false

  constructor(
    cfg: VerifyConfig,
    forwarded: Pick<Config['forwardedClientCert'], 'trustedProxies'>,
    opts: BotVerifierOptions = {},
  ) {
    this.cfg = cfg
    this.observer = opts.observer
    // the front proxies trusted to vouch for a client certificate are the ones trusted to name the client
    this.trusted = trustedProxySet(forwarded)
    if (cfg.shippedRanges) {
      for (const s of SHIPPED_RANGE_FILES) this.files.set(s.url, s)
    }
    for (const src of cfg.ranges) {
      let products: RangeProducts
      try {
        products = rangeFileProducts(src)
      } catch {
        // refused by the config check; a verifier built without it lets such a file vouch for nothing
        products = []
      }
      this.configured.set(src.url, products)
    }
    if (cfg.dns.enabled) {
      this.dns = new DnsVerifier({
        domains: dnsDomains(cfg.dns.domains),
        timeoutMs: cfg.dns.timeout,
        cacheTtlMs: cfg.dns.cacheTtl,
        cacheSize: cfg.dns.cacheSize,
        servers: cfg.dns.servers,
        onUnverified: (waiting) => opts.anomalies?.found('unverified_claim', waiting),
      })
    }
  }

  /** First fetch of every configured range file. Never throws; the snapshot serves until a fetch succeeds. */
  async start(): Promise<void> {
    if (!this.cfg.enabled) return
    await Promise.all(this.cfg.ranges.map((src) => this.refresh(src)))
  }

  close(): void {
    this.closed = true
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    this.dns?.close()
  }

  /** The operators with ranges currently loaded (lower case). */
  get operators(): string[] {
    return this.ranges.operators
  }

  /** Waits for DNS lookups already started (tests). */
  dnsSettled(): Promise<void> {
    return this.dns?.settled() ?? Promise.resolve()
  }

  /**
   * Whether a claim to crawl for `operator` (as `product`, when given) from `address` holds: `verified` inside
   * the operator's published ranges for that product (without one, any of its ranges) or confirmed by DNS in
   * a domain for that product (without one, any of the operator's),
   * `unverified_claim` outside them, `unknown` when nothing is known to check it against (no ranges for the
   * product, or a DNS answer still on its way).
   */
  verifyBotClaim(operator: string, address: string, product?: string): BotClaimResult {
    const r = this.check(operator, address, product)
    return r === 'ranges' || r === 'dns' ? 'verified' : r === 'pending' ? 'unknown' : r
  }

  /**
   * Checks the crawler claims of this request's user agent, if it makes any: a user agent verified by the
   * operator it is named after (every other claim in it not found false) replaces the user-agent evidence
   * with a verified copy; a false claim adds the `unverified_claim` anomaly, and then nothing is verified.
   * A claim whose DNS lookup is on its way is counted (not in this request's anomalies: it is answered by
   * then) if the lookup concludes unverified.
   */
  attest(evidence: EvidenceSet, req: RequestInfo, conn: ConnectionInfo): void {
    const ua = evidenceOf<UserAgentEvidence>(evidence, 'useragent')
    if (!ua || !this.cfg.enabled) return
    const operators = claimedOperators(ua)
    if (operators.length === 0) return
    const address = requestClient(req, conn.remoteAddress, this.trusted)
    let verifiedBy: 'ranges' | 'dns' | undefined
    let verifiedFor: string | undefined
    let falseClaim = false
    let pending: string | undefined
    let pendingProduct: string | undefined
    for (const operator of operators) {
      // the product the user agent is named after is checked against that product's ranges only: an address
      // ChatGPT-User fetches from (anyone can have ChatGPT fetch a URL) says nothing about GPTBot
      const named = operatorVouchesFor(operator, ua)
      const r = this.check(operator, address, named ? ua.product : undefined)
      if (r === 'unverified_claim') falseClaim = true
      else if (r === 'pending') {
        // a user agent named after another product is false whatever the lookup answers
        if (!named) falseClaim = true
        else if (pending === undefined) {
          pending = operator
          pendingProduct = ua.product
        }
      } else if (r === 'ranges' || r === 'dns') {
        // the address checks out for the operator, but the user agent is named after another product
        if (!named) falseClaim = true
        else {
          verifiedBy = r
          verifiedFor = operator
        }
      }
    }
    if (falseClaim) {
      if (!evidence.anomalies.includes('unverified_claim')) evidence.anomalies.push('unverified_claim')
      return
    }
    if (verifiedBy !== undefined && verifiedFor !== undefined)
      replaceEvidence(evidence, 'useragent', verifiedEvidence(ua, verifiedFor, verifiedBy))
    // a request is counted once at most: it waits on the first of its lookups on their way
    if (pending !== undefined) this.dns?.wait(pending, address, pendingProduct)
  }

  private check(
    operator: string,
    address: string,
    product: string | undefined,
  ): 'ranges' | 'dns' | 'unverified_claim' | 'pending' | 'unknown' {
    if (!this.cfg.enabled) return 'unknown'
    const ranges = this.ranges
    // a product no loaded file vouches for is not checked by its siblings' ranges: its own crawlers come from
    // elsewhere, and would be counted as false claims whenever they are the real thing
    const ranged = product === undefined ? ranges.has(operator) : ranges.covers(operator, product)
    if (ranged && ranges.contains(operator, address, product)) return 'ranges'
    // DNS vouches for a product only by the domains documented (or configured) for it: Google's special
    // crawlers and user-triggered fetchers are under google.com, its common crawlers under googlebot.com
    const d = this.dns?.check(operator, address, product)
    if (d !== undefined) {
      if (d === 'verified') return 'dns'
      if (d === 'pending') return 'pending'
      // no lookup will ever conclude an unchecked claim (every allowed lookup is running): counted now, as a
      // lookup that failed would be, or a client with fresh addresses could keep every claim uncounted
      return 'unverified_claim'
    }
    return ranged ? 'unverified_claim' : 'unknown'
  }

  private get ranges(): OperatorRanges {
    this.compiled ??= this.compile()
    return this.compiled
  }

  private compile(): OperatorRanges {
    return new OperatorRanges(this.files.values())
  }

  private async refresh(src: RangeSource): Promise<void> {
    if (this.closed) return
    let ok = true
    let error: string | undefined
    try {
      const doc = await fetchJsonDocument(src.url, {
        timeoutMs: this.cfg.fetchTimeout,
        maxBytes: MAX_RANGE_FILE_BYTES,
      })
      const prefixes = parseRangeDocument(doc)
      if (this.closed) return
      this.files.set(src.url, {
        operator: src.operator,
        products: this.configured.get(src.url) ?? [],
        prefixes,
      })
      // compiled once per refresh (at the next lookup): requests only ever look up the compiled sets
      this.compiled = undefined
    } catch (err) {
      ok = false
      error = describeFetchError(err)
    }
    if (this.closed) return
    const prefixes = this.files.get(src.url)?.prefixes.length ?? 0
    this.observer?.refreshed(src.operator, src.url, ok ? 'success' : 'failure', prefixes, error)
    const refreshMs = Math.max(1000, this.cfg.refreshInterval)
    this.schedule(src, ok ? refreshMs : Math.min(refreshMs, this.cfg.retryInterval))
  }

  private schedule(src: RangeSource, delayMs: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t)
      void this.refresh(src)
    }, delayMs)
    t.unref()
    this.timers.add(t)
  }
}

function verifiedEvidence(ua: UserAgentEvidence, operator: string, by: 'ranges' | 'dns'): UserAgentEvidence {
  return Object.freeze({ ...ua, verified: true, operator: ua.operator ?? operator, verifiedBy: by })
}
