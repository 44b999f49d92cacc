// What mTLS and forwarded client certificates have in common as credentials: how a certificate is named,
// described, cached and turned into attributes. Only the strongest certificate describes the caller.
import type { CertEvidence, EvidenceSet } from '../../types.ts'
import type { CredentialSource } from './source.ts'

type CertificateParts = Pick<
  CredentialSource<CertEvidence>,
  | 'fingerprintField'
  | 'fingerprint'
  | 'attributes'
  | 'expiresAt'
  | 'defaultKind'
  | 'builtinIdentity'
  | 'cacheKey'
  | 'describe'
  | 'certificate'
>

export const certificateParts: CertificateParts = {
  fingerprintField: 'cert',
  fingerprint: (cert) => cert.sha256?.slice(0, 16),
  attributes(cert, a) {
    if (cert.spiffeId) a['spiffe_id'] ??= cert.spiffeId
    if (cert.sha256) a['cert_sha256'] ??= cert.sha256
    if (cert.subject) a['cert_subject'] ??= cert.subject
  },
  expiresAt: (cert) => cert.notAfter,
  defaultKind: () => 'service',
  builtinIdentity(cert) {
    const name =
      cert.spiffeId ??
      cert.cn ??
      cert.dnsSans[0] ??
      cert.uriSans[0] ??
      cert.sha256?.slice(0, 16) ??
      'certificate'
    return { name, kind: 'service', rule: 'builtin:cert' }
  },
  // A certificate without a hash cannot be told apart from another one: not cacheable. A hash worked out from
  // the certificate's bytes (mTLS, a forwarded PEM) stands for all of it but its expiry, which on an mTLS
  // connection is its verified chain's (an intermediate may end it first): one certificate sent with and
  // without its intermediate expires at two times, so the expiry is in its key. An XFCC element's Hash only
  // stands beside the fields its front proxy was set to forward (Subject, URI, DNS, or the whole Cert with its
  // expiry), and one certificate forwarded with more or fewer of them is named, described and expires by what
  // it came with: those fields are in its key (as JSON, which no subject can make ambiguous).
  cacheKey(cert) {
    if (!cert.sha256) return undefined
    const verified = cert.verified ? 1 : 0
    if (cert.via !== 'xfcc') return `${verified}:${cert.sha256}:${cert.notAfter ?? ''}`
    return `${verified}:${cert.sha256}:${JSON.stringify([cert.subject, cert.cn, cert.uriSans, cert.dnsSans, cert.notAfter])}`
  },
  describe(c) {
    const parts = [c.verified ? 'verified' : 'unverified']
    if (c.spiffeId) parts.push(c.spiffeId)
    if (c.subject) parts.push(`subject="${c.subject}"`)
    if (c.dnsSans.length) parts.push(`dns=${c.dnsSans.join(',')}`)
    if (c.sha256) parts.push(`sha256=${c.sha256.slice(0, 16)}…`)
    return parts.join(' ')
  },
  certificate: (cert) => cert,
}

/** The presented client certificates, strongest first (rule `cert`/`spiffe` conditions, token binding). */
export function certificates(set: EvidenceSet): CertEvidence[] {
  const out: CertEvidence[] = []
  for (const c of set.credentials) {
    const cert = c.source.certificate?.(c.evidence)
    if (cert) out.push(cert)
  }
  return out
}

/** The strongest client certificate presented, if any. */
export function certificateOf(set: EvidenceSet): CertEvidence | undefined {
  for (const c of set.credentials) {
    const cert = c.source.certificate?.(c.evidence)
    if (cert) return cert
  }
  return undefined
}
