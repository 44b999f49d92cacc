// Forwarded client certificates (XFCC, RFC 9440 Client-Cert, AWS ALB, nginx). Only a trusted proxy may
// vouch for a client certificate; from anyone else the headers are a spoofing attempt.
import type { Config } from '../../config/schema.ts'
import type { CertEvidence, ConnectionInfo, Extractor, Failure, RequestInfo } from '../../types.ts'
import { CidrSet } from '../../util/cidr.ts'
import { albEvidence } from '../forwarded/alb.ts'
import { clientCertEvidence } from '../forwarded/client-cert.ts'
import {
  CLIENT_CERT_HEADER,
  hasForwardedCertHeader,
  headerText,
  NGINX_CERT_HEADERS,
  XFCC_HEADER,
} from '../forwarded/headers.ts'
import { nginxCertEvidence } from '../forwarded/nginx.ts'
import { xfccEvidence } from '../forwarded/xfcc.ts'

export class XfccExtractor implements Extractor {
  readonly source = 'xfcc' as const
  private readonly trusted: CidrSet

  constructor(cfg: Config['forwardedClientCert']) {
    this.trusted = new CidrSet(cfg.trustedProxies)
  }

  /** whether the direct peer may vouch for a client certificate */
  isTrusted(remoteAddress: string): boolean {
    return this.trusted.has(remoteAddress)
  }

  extract(req: RequestInfo, conn: ConnectionInfo): CertEvidence | Failure | undefined {
    if (!hasForwardedCertHeader(req.headers)) return undefined
    if (!this.trusted.has(conn.remoteAddress)) {
      return {
        failed: true,
        source: 'xfcc',
        reason: 'untrusted_forwarder',
        detail: 'forwarded client certificate header from a peer not in trustedProxies',
        attributes: { peer: conn.remoteAddress },
      }
    }
    return forwardedCertEvidence(req)
  }
}

export function createForwardedCertExtractor(cfg: Config['forwardedClientCert']): XfccExtractor {
  return new XfccExtractor(cfg)
}

/** Evidence from whichever forwarded-cert header is present, in order XFCC, Client-Cert, ALB, nginx. */
export function forwardedCertEvidence(req: RequestInfo): CertEvidence | Failure | undefined {
  const xfcc = headerText(req.headers, XFCC_HEADER)
  if (xfcc !== undefined) return xfccEvidence(xfcc)
  const clientCert = headerText(req.headers, CLIENT_CERT_HEADER)
  if (clientCert !== undefined) return clientCertEvidence(clientCert)
  const alb = albEvidence(req.headers)
  if (alb) return alb
  for (const name of NGINX_CERT_HEADERS) {
    const v = headerText(req.headers, name)
    if (v !== undefined) return nginxCertEvidence(v)
  }
  return {
    failed: true,
    source: 'xfcc',
    reason: 'malformed',
    detail: 'forwarded client certificate header too large or empty',
  }
}
