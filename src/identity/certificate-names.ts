// The DER decoder behind certificateNames (certificate.ts), in a module of its own so that the X.509 schema
// library it needs is loaded only by a sidecar that reads client certificates (loadCertificateDecoder).
import { AsnConvert } from '@peculiar/asn1-schema'
import {
  BasicConstraints,
  Certificate,
  type GeneralName,
  id_ce_basicConstraints,
  id_ce_keyUsage,
  id_ce_nameConstraints,
  id_ce_subjectAltName,
  KeyUsage,
  NameConstraints,
  SubjectAlternativeName,
} from '@peculiar/asn1-x509'
import type { CertificateNames, ChainExtensions, GeneralNameValue, NameConstraintSet } from './certificate.ts'

const OID_COMMON_NAME = '2.5.4.3'
const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1'
const DER_SEQUENCE = 0x30

/**
 * Decodes the subject CN and the subjectAltName extension from a certificate's DER. Node prints all SANs on
 * one line where a URI may hold ", DNS:" or quotes and reads back right only as long as its quoting does
 * (which changed across Node versions); the decoded GeneralNames need no unquoting, and IPs come from their
 * octets (IPv6 compressed, lower case) rather than Node's expanded upper-case text.
 * Cost: one parse of an EC P-256 SVID leaf took 0.9–1.3 ms in loops of 5 000 on a 2-core machine at load
 * 8–9 (so less on an idle one), 2.5–3× Node's own `new X509Certificate()` of the same DER there. It runs
 * once per TLS connection, and per request for a forwarded certificate, which is parsed by Node as well.
 */
export function certificateNames(der: Uint8Array): CertificateNames {
  const out: CertificateNames = { sans: { dns: [], uri: [], email: [], ip: [] } }
  const tbs = AsnConvert.parse(der, Certificate).tbsCertificate
  for (const rdn of tbs.subject) {
    const cn = rdn.find((a) => a.type === OID_COMMON_NAME)?.value.toString()
    if (cn) {
      out.cn = cn
      break
    }
  }
  const ext = tbs.extensions?.find((e) => e.extnID === id_ce_subjectAltName)
  if (!ext) return out
  for (const name of AsnConvert.parse(ext.extnValue, SubjectAlternativeName)) {
    const { type, value } = generalName(name)
    if (type !== 'other') out.sans[type].push(value)
  }
  return out
}

/** a GeneralName (a SAN, a name-constraint subtree) as the kinds this proxy reads: DNS, URI, e-mail, IP */
function generalName(name: GeneralName): GeneralNameValue {
  if (name.dNSName !== undefined) return { type: 'dns', value: name.dNSName }
  if (name.uniformResourceIdentifier !== undefined)
    return { type: 'uri', value: name.uniformResourceIdentifier }
  if (name.rfc822Name !== undefined) return { type: 'email', value: name.rfc822Name }
  if (name.iPAddress !== undefined) return { type: 'ip', value: name.iPAddress }
  return { type: 'other', value: '' }
}

/** The nameConstraints extension of a CA certificate's DER (RFC 5280 §4.2.1.10), or undefined without one. */
export function nameConstraints(der: Uint8Array): NameConstraintSet | undefined {
  const tbs = AsnConvert.parse(der, Certificate).tbsCertificate
  const ext = tbs.extensions?.find((e) => e.extnID === id_ce_nameConstraints)
  if (!ext) return undefined
  const nc = AsnConvert.parse(ext.extnValue, NameConstraints)
  return {
    permitted: (nc.permittedSubtrees ?? []).map((s) => generalName(s.base)),
    excluded: (nc.excludedSubtrees ?? []).map((s) => generalName(s.base)),
  }
}

/** What a certificate's DER says about its place in a chain that Node's X509Certificate does not show. */
export function chainExtensions(der: Uint8Array): ChainExtensions {
  const cert = AsnConvert.parse(der, Certificate)
  const out: ChainExtensions = { signatureAlgorithm: cert.signatureAlgorithm.algorithm }
  // id-ecPublicKey's parameters: a named curve is an OID, written-out parameters a SEQUENCE
  const key = cert.tbsCertificate.subjectPublicKeyInfo.algorithm
  if (
    key.algorithm === OID_EC_PUBLIC_KEY &&
    key.parameters &&
    new Uint8Array(key.parameters)[0] === DER_SEQUENCE
  )
    out.explicitCurve = true
  for (const ext of cert.tbsCertificate.extensions ?? []) {
    if (ext.extnID === id_ce_basicConstraints) {
      const bc = AsnConvert.parse(ext.extnValue, BasicConstraints)
      out.basicConstraints =
        bc.pathLenConstraint === undefined ? { ca: bc.cA } : { ca: bc.cA, pathLength: bc.pathLenConstraint }
    } else if (ext.extnID === id_ce_keyUsage) {
      out.keyUsage = AsnConvert.parse(ext.extnValue, KeyUsage).toNumber()
    }
  }
  return out
}
