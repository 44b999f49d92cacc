// TLS files read at start and again while serving: the https listener's certificate, key and client CA
// bundle, and the client certificate, key and CA bundle of https:/h2: upstreams (upstreamTls). cert-manager
// and Kubernetes Secret volumes rotate them in place, and a process that kept its first certificate would
// present it past its expiry. Both reads go through the same checks, so a start refuses what a rotation would.
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { type ConnectionOptions, createSecureContext } from 'node:tls'
import { pemCertificateBlocks, pemCertificates } from '../identity/certificate.ts'
import type { CertificateValidity } from '../types.ts'
import { readProblem } from '../util/read-problem.ts'

export interface ListenerTlsFiles {
  cert: string
  key: string
  clientCA?: string | undefined
}

/** PEM text of the listener's secure context, and the client CA certificates its `ca` holds */
export interface ListenerTlsMaterial {
  cert: string
  key: string
  ca?: string | undefined
  clientCAs: X509Certificate[]
}

/** why TLS material was refused, and the setting and file it concerns (never any key material) */
export class TlsMaterialError extends Error {
  constructor(
    /** the setting's name within its section: cert, key, clientCA, ca */
    readonly setting: string,
    readonly file: string,
    message: string,
  ) {
    super(message)
  }
}

function readPem(setting: string, file: string): Promise<string> {
  return readFile(file, 'utf8').catch((err: unknown) => {
    throw new TlsMaterialError(setting, file, readProblem(err))
  })
}

function parse<T>(setting: string, file: string, what: string, check: () => T): T {
  try {
    return check()
  } catch (err) {
    throw new TlsMaterialError(setting, file, `not a valid ${what}: ${(err as Error).message}`)
  }
}

/** a certificate file: one that parses, not merely one OpenSSL skips its way through */
function checkCertificate(setting: string, file: string, pem: string): void {
  // OpenSSL's words for a file without one ("no start line") do not say what is missing
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TlsMaterialError(setting, file, 'holds no certificate (no PEM CERTIFICATE block)')
  }
  parse(setting, file, 'PEM certificate', () => new X509Certificate(pem))
}

/** PEM of a passphrase-protected key: PKCS#8 or OpenSSL's traditional format with an encryption header */
const ENCRYPTED_KEY_RE = /-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type:\s*4,ENCRYPTED/m

/** a key that parses; the sidecar has no passphrase setting, and OpenSSL's words for that are "interrupted" */
function checkKey(setting: string, file: string, pem: string): void {
  if (ENCRYPTED_KEY_RE.test(pem)) {
    throw new TlsMaterialError(
      setting,
      file,
      'is encrypted (passphrase-protected); the sidecar reads unencrypted keys only',
    )
  }
  parse(setting, file, 'PEM private key', () => createPrivateKey(pem))
}

/** a CA bundle with at least one certificate: an empty one would leave Node to its default public roots */
function checkCaBundle(setting: string, file: string, pem: string | undefined): X509Certificate[] {
  const blocks = pemCertificateBlocks(pem)
  if (blocks.length === 0) {
    throw new TlsMaterialError(setting, file, 'holds no CA certificate (no PEM CERTIFICATE block)')
  }
  return blocks.map((block) => parse(setting, file, 'PEM CA bundle', () => new X509Certificate(block)))
}

/** the pieces make a secure context, the key belonging to the certificate */
function checkContext(
  files: { cert?: string | undefined; key?: string | undefined },
  /** the setting blamed for anything else OpenSSL refuses */
  otherwise: { setting: string; file: string },
  material: { cert?: string | undefined; key?: string | undefined; ca?: string | undefined },
): void {
  try {
    createSecureContext({
      ...(material.cert !== undefined ? { cert: material.cert } : {}),
      ...(material.key !== undefined ? { key: material.key } : {}),
      ...(material.ca !== undefined ? { ca: material.ca } : {}),
    })
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH' && files.key !== undefined) {
      throw new TlsMaterialError('key', files.key, `does not match the certificate in ${files.cert}`)
    }
    throw new TlsMaterialError(otherwise.setting, otherwise.file, e.message)
  }
}

/**
 * Reads the files and checks that they make a secure context the listener can serve with. A configured
 * client CA must hold a certificate: an empty bundle would start a listener that silently asks for no
 * client certificate, and, once serving (client certificates are requested for good), would leave Node
 * verifying them against its default public roots or against nothing. So it is refused, at start and on
 * rotation alike.
 */
export async function loadListenerTls(files: ListenerTlsFiles): Promise<ListenerTlsMaterial> {
  const [cert, key, ca] = await Promise.all([
    readPem('cert', files.cert),
    readPem('key', files.key),
    files.clientCA ? readPem('clientCA', files.clientCA) : undefined,
  ])
  checkCertificate('cert', files.cert, cert)
  checkKey('key', files.key, key)
  const clientCAs = files.clientCA ? checkCaBundle('clientCA', files.clientCA, ca) : []
  checkContext(files, { setting: 'cert', file: files.cert }, { cert, key, ca })
  return { cert, key, ca, clientCAs }
}

/** how far ahead of this host's clock a rotated certificate's validity may start: its issuer's clock may run ahead */
export const NOT_BEFORE_SKEW_MS = 5 * 60_000

/** a certificate refused by its dates alone, in words and dates a log line may carry */
export interface CertificateOutOfDates {
  event: 'tls_reload_cert_expired' | 'tls_reload_cert_not_yet_valid'
  reason: string
  notBefore: string
  notAfter: string
}

/**
 * Why the first certificate of `pem` must not replace the one being served: it has expired, or its validity
 * starts more than NOT_BEFORE_SKEW_MS after `now`. One that expires soon is still taken: it is valid now, and
 * refusing it would leave an older one to be served until it runs out too. Only the leaf counts: a bundle may
 * carry an expired cross-signed issuer that clients with another path to a root never use.
 */
export function certificateOutOfDates(pem: string, now: number): CertificateOutOfDates | undefined {
  let leaf: X509Certificate
  try {
    leaf = new X509Certificate(pem)
  } catch {
    return undefined // loadListenerTls refuses what does not parse
  }
  const from = Date.parse(leaf.validFrom)
  const to = Date.parse(leaf.validTo)
  const dates = { notBefore: new Date(from).toISOString(), notAfter: new Date(to).toISOString() }
  if (to < now) {
    return {
      event: 'tls_reload_cert_expired',
      reason: `the certificate expired at ${dates.notAfter}`,
      ...dates,
    }
  }
  if (from > now + NOT_BEFORE_SKEW_MS) {
    return {
      event: 'tls_reload_cert_not_yet_valid',
      reason: `the certificate is not valid before ${dates.notBefore}`,
      ...dates,
    }
  }
  return undefined
}

/**
 * The validity of the certificate in `pem` that expires first: a served chain stops working for its clients
 * when its first certificate runs out, the leaf or an intermediate. undefined when none parses.
 */
export function chainValidity(pem: string): CertificateValidity | undefined {
  let first: CertificateValidity | undefined
  for (const c of pemCertificates(pem)) {
    const notAfter = Math.floor(Date.parse(c.validTo) / 1000)
    const notBefore = Math.floor(Date.parse(c.validFrom) / 1000)
    if (!Number.isFinite(notAfter) || !Number.isFinite(notBefore)) continue
    if (first === undefined || notAfter < first.notAfter) first = { notBefore, notAfter }
  }
  return first
}

/** upstreamTls: the files an https:/h2: upstream connection is made with (cert and key: both or neither) */
export interface UpstreamTlsFiles {
  ca?: string | undefined
  cert?: string | undefined
  key?: string | undefined
}

/**
 * Reads upstreamTls's files and checks them as the listener's are: the certificate and key parse and belong
 * together, and a configured CA bundle holds a certificate (an empty one must not quietly turn into "trust
 * the public roots"). `servername` is passed on as it is.
 */
export async function loadUpstreamTls(
  files: UpstreamTlsFiles,
  servername?: string | undefined,
): Promise<ConnectionOptions> {
  const [ca, cert, key] = await Promise.all([
    files.ca ? readPem('ca', files.ca) : undefined,
    files.cert ? readPem('cert', files.cert) : undefined,
    files.key ? readPem('key', files.key) : undefined,
  ])
  if (files.ca) checkCaBundle('ca', files.ca, ca)
  if (files.cert && files.key && cert !== undefined && key !== undefined) {
    checkCertificate('cert', files.cert, cert)
    checkKey('key', files.key, key)
  }
  const otherwise = files.cert
    ? { setting: 'cert', file: files.cert }
    : { setting: 'ca', file: files.ca ?? '' }
  checkContext(files, otherwise, { cert, key, ca })
  const out: ConnectionOptions = {}
  if (ca !== undefined) out.ca = ca
  if (cert !== undefined && key !== undefined) {
    out.cert = cert
    out.key = key
  }
  if (servername) out.servername = servername
  return out
}
