// Forwarded client certificates (XFCC, RFC 9440 Client-Cert, AWS ALB, nginx). Only a trusted proxy may
// vouch for a client certificate, and only in the ONE header format configured for it: a front proxy sets
// its own header but passes every other one on as the client sent it, so a header of any other family (or
// under another spelling) is the client's, not the proxy's, and is a spoofing attempt even from a trusted peer.
import { LRUCache } from 'lru-cache'
import type { Config } from '../../config/schema.ts'
import type {
  CertEvidence,
  ConnectionInfo,
  EvidenceSet,
  Failure,
  ForwardedCertFormat,
  RequestInfo,
} from '../../types.ts'
import { CidrSet } from '../../util/cidr.ts'
import { sha256Hex } from '../../util/fingerprint.ts'
import { lruGet } from '../../util/lru-get.ts'
import { SecondSight } from '../../util/second-sight.ts'
import { certificateDecoderLoaded, loadCertificateDecoder } from '../certificate.ts'
import { albEvidence } from '../forwarded/alb.ts'
import { clientCertEvidence } from '../forwarded/client-cert.ts'
import {
  CLIENT_CERT_HEADER,
  FORWARDED_CERT_FORMATS,
  hasForeignForwardedCertHeader,
  headerText,
  isFormatHeader,
  isForwardedCertHeader,
  MAX_FORWARDED_HEADER_BYTES,
  malformed,
  NGINX_CERT_HEADER,
  sanitizeForwardedCertHeaders,
  singleCertificateHeader,
  XFCC_HEADER,
} from '../forwarded/headers.ts'
import { nginxCertEvidence } from '../forwarded/nginx.ts'
import { xfccEvidence } from '../forwarded/xfcc.ts'
import { certificateOf, certificateParts } from './certificate.ts'
import { type CredentialSource, evidenceOf, type SourceExtractor } from './source.ts'

type ForwardedConfig = Config['forwardedClientCert']

/** trustedProxies compiled per header format; an address is trusted for at most one format. */
export class TrustedForwarders {
  private readonly sets: [ForwardedCertFormat, CidrSet][] = []

  /** whether any peer is trusted for any format */
  get any(): boolean {
    return this.sets.length > 0
  }

  constructor(cfg: Pick<ForwardedConfig, 'trustedProxies' | 'format'>) {
    const byFormat = new Map<ForwardedCertFormat, string[]>()
    for (const entry of cfg.trustedProxies) {
      // an entry without a format of its own and no global one is trusted for nothing (`check` errors)
      const format = typeof entry === 'string' ? cfg.format : entry.format
      if (format === undefined) continue
      const cidr = typeof entry === 'string' ? entry : entry.cidr
      byFormat.set(format, [...(byFormat.get(format) ?? []), cidr])
    }
    for (const f of FORWARDED_CERT_FORMATS) {
      const cidrs = byFormat.get(f)
      if (cidrs) this.sets.push([f, new CidrSet(cidrs)])
    }
  }

  /** The one format the peer may set; undefined when it is not trusted (or listed under two formats). */
  formatFor(remoteAddress: string): ForwardedCertFormat | undefined {
    let found: ForwardedCertFormat | undefined
    for (const [format, set] of this.sets) {
      if (!set.has(remoteAddress)) continue
      if (found !== undefined) return undefined
      found = format
    }
    return found
  }
}

/**
 * Answers kept per config. A front proxy sends the same header with every request of a client (Envoy's XFCC
 * describes the certificate of the connection it came in on), so reading it again is work done once, as a
 * token's verification is. A reload builds a new extractor: no answer outlives the trustedProxies, format
 * and toUpstream it was found under.
 */
const MAX_ANSWERS = 4096
/**
 * A header up to this long is its own cache key: no certificate fits in it (a PEM one is longer), so the cache
 * keeps no certificate text the evidence does not. A longer one (Cert=, Client-Cert, nginx's PEM) is keyed by
 * its sha256, which also bounds the memory of a full cache whatever the headers' size.
 */
const MAX_TEXT_KEY = 256

/** the header of the formats whose answer is that one header's text and nothing else */
const SINGLE_HEADER: Readonly<Partial<Record<ForwardedCertFormat, string>>> = {
  xfcc: XFCC_HEADER,
  rfc9440: CLIENT_CERT_HEADER,
  nginx: NGINX_CERT_HEADER,
}

export class XfccExtractor implements SourceExtractor<CertEvidence> {
  readonly source = 'xfcc' as const
  readonly forwarders: TrustedForwarders
  private readonly toUpstream: ForwardedConfig['toUpstream']
  /** evidence or failure by format and header text (or its sha256), from a header's second sight on */
  private readonly answers = new LRUCache<string, CertEvidence | Failure>({ max: MAX_ANSWERS })
  /** keys seen once, not kept yet: a stream of headers that never repeat neither fills nor churns the cache */
  private readonly admission = new SecondSight(MAX_ANSWERS)

  constructor(cfg: ForwardedConfig) {
    this.forwarders = new TrustedForwarders(cfg)
    this.toUpstream = cfg.toUpstream
  }

  /**
   * A front proxy sets the header of its one format and passes every other one on as the client sent it, so
   * any other forwarded-certificate header (or spelling) is the client's.
   */
  spoofedHeaders(req: RequestInfo, conn: ConnectionInfo): boolean {
    return hasForeignForwardedCertHeader(req.headers, () => this.formatFor(conn.remoteAddress))
  }

  /** Removes forwarded-certificate headers from untrusted peers, or rewrites them (forwardedClientCert.toUpstream). */
  prepareUpstreamHeaders(
    headers: Record<string, string | string[] | undefined>,
    evidence: EvidenceSet,
    conn: ConnectionInfo,
  ): void {
    sanitizeForwardedCertHeaders(
      headers,
      this.formatFor(conn.remoteAddress),
      this.toUpstream,
      evidenceOf<CertEvidence>(evidence, 'xfcc') ?? certificateOf(evidence),
    )
  }

  /** the header format the direct peer may vouch for a client certificate in; undefined: none */
  formatFor(remoteAddress: string): ForwardedCertFormat | undefined {
    return this.forwarders.formatFor(remoteAddress)
  }

  /** the certificate decoder, before the first request of this config can need it */
  start(): Promise<void> {
    return this.forwarders.any ? loadCertificateDecoder() : Promise.resolve()
  }

  extract(
    req: RequestInfo,
    conn: ConnectionInfo,
  ): CertEvidence | Failure | undefined | Promise<CertEvidence | Failure | undefined> {
    let any = false
    let own = false
    let format: ForwardedCertFormat | undefined | null = null
    for (const name in req.headers) {
      if (!isForwardedCertHeader(name)) continue
      any = true
      if (format === null) format = this.formatFor(conn.remoteAddress)
      if (format !== undefined && isFormatHeader(name, format)) own = true
    }
    if (!any) return undefined
    if (format === undefined || format === null || !own)
      return untrustedForwarder(conn.remoteAddress, format ?? undefined)
    // start() loads the decoder; only a request racing a start that has not finished waits for it here
    if (!certificateDecoderLoaded()) {
      const trusted = format
      return loadCertificateDecoder().then(() => forwardedCertEvidence(req, trusted))
    }
    return this.evidence(req, format)
  }

  /**
   * forwardedCertEvidence, from the cache when the header was read before. The answer is the header text's
   * alone (the format picks the header and how it is read), and is shared, like a cached token's: evidence
   * is never changed once made, so the entries and fingerprints built on it are made once too.
   */
  private evidence(req: RequestInfo, format: ForwardedCertFormat): CertEvidence | Failure | undefined {
    const name = SINGLE_HEADER[format]
    // a repeated header Node did not join, an empty or oversized one: read as always, not kept
    const text = name === undefined ? undefined : req.headers[name]
    if (typeof text !== 'string' || text.length === 0 || text.length > MAX_FORWARDED_HEADER_BYTES)
      return forwardedCertEvidence(req, format)
    const key = text.length <= MAX_TEXT_KEY ? `${format} ${text}` : `${format}#${sha256Hex(text)}`
    const cached = lruGet(this.answers, key)
    if (cached !== undefined) return cached
    const answer = forwardedCertEvidence(req, format)
    if (answer !== undefined && this.admission.seen(key)) this.answers.set(key, answer)
    return answer
  }

  close(): void {
    this.answers.clear()
    this.admission.clear()
  }
}

/**
 * Why a forwarded-certificate header from `peer` is not believed: the peer is not trusted (`trusted`
 * undefined), or the header is not of the one format it is trusted for. One text for the live proxy and for
 * the rule tests that must give its answer.
 */
export function untrustedForwarder(peer: string, trusted: ForwardedCertFormat | undefined): Failure {
  if (trusted === undefined) {
    return {
      failed: true,
      source: 'xfcc',
      reason: 'untrusted_forwarder',
      detail: 'forwarded client certificate header from a peer not in trustedProxies',
      attributes: { peer },
    }
  }
  return {
    failed: true,
    source: 'xfcc',
    reason: 'untrusted_forwarder',
    detail: `forwarded client certificate header other than the ${trusted} format this proxy is trusted for`,
    attributes: { peer, format: trusted },
  }
}

export function createForwardedCertExtractor(cfg: ForwardedConfig): XfccExtractor {
  return new XfccExtractor(cfg)
}

/** Client certificates vouched for by a trusted front proxy (forwardedClientCert). */
export const forwardedCertSource: CredentialSource<CertEvidence> = {
  name: 'xfcc',
  precedence: 20,
  ...certificateParts,
  describe: (cert) => `${certificateParts.describe(cert)}${cert.via ? ` via ${cert.via}` : ''}`,
  create: (config) => new XfccExtractor(config.forwardedClientCert),
}

function tooLarge(): Failure {
  return {
    failed: true,
    source: 'xfcc',
    reason: 'malformed',
    detail: 'forwarded client certificate header too large or empty',
  }
}

/** Evidence from the header(s) of the one format the peer is trusted for; other headers are never read. */
export function forwardedCertEvidence(
  req: RequestInfo,
  format: ForwardedCertFormat,
): CertEvidence | Failure | undefined {
  switch (format) {
    case 'xfcc': {
      const v = headerText(req.headers, XFCC_HEADER)
      return v === undefined ? tooLarge() : xfccEvidence(v)
    }
    case 'rfc9440': {
      const v = headerText(req.headers, CLIENT_CERT_HEADER)
      // Client-Cert-Chain alone says nothing about the client
      if (v === undefined) return req.headers[CLIENT_CERT_HEADER] === undefined ? undefined : tooLarge()
      return clientCertEvidence(v)
    }
    case 'alb':
      return albEvidence(req.headers) ?? undefined
    case 'nginx': {
      const v = singleCertificateHeader(req.headers, NGINX_CERT_HEADER)
      if (v === 'repeated') return malformed(`${NGINX_CERT_HEADER} sent more than once`)
      return v === undefined ? tooLarge() : nginxCertEvidence(v)
    }
  }
}
