// The https listener's certificate, key and client CA bundle read again while serving: cert-manager and
// Kubernetes Secret volumes rotate them in place, and a listener that kept its first certificate would
// serve it past its expiry.
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createSecureContext } from 'node:tls'

export interface ListenerTlsFiles {
  cert: string
  key: string
  clientCA?: string | undefined
}

/** PEM text of the listener's secure context */
export interface ListenerTlsMaterial {
  cert: string
  key: string
  ca?: string | undefined
}

/** why new TLS material was refused, and the file it concerns (never any key material) */
export class TlsMaterialError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(message)
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g

/**
 * Reads the files and checks that they make a secure context the listener can serve with. A listener
 * started with a client CA requests client certificates for good: a bundle without a certificate would
 * leave Node verifying them against its default public roots (an empty `ca`) or against nothing, so it is
 * refused rather than applied.
 */
export async function loadListenerTls(files: ListenerTlsFiles): Promise<ListenerTlsMaterial> {
  const read = (file: string) =>
    readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new TlsMaterialError(file, err.code ? `cannot read it (${err.code})` : err.message)
    })
  const [cert, key, ca] = await Promise.all([
    read(files.cert),
    read(files.key),
    files.clientCA ? read(files.clientCA) : undefined,
  ])
  const parse = (file: string, what: string, check: () => unknown) => {
    try {
      check()
    } catch (err) {
      throw new TlsMaterialError(file, `not a valid ${what}: ${(err as Error).message}`)
    }
  }
  parse(files.cert, 'PEM certificate', () => new X509Certificate(cert))
  parse(files.key, 'PEM private key', () => createPrivateKey(key))
  if (files.clientCA) {
    const certificates = ca?.match(PEM_CERTIFICATE) ?? []
    if (certificates.length === 0) {
      throw new TlsMaterialError(files.clientCA, 'holds no CA certificate; the client CA cannot be removed')
    }
    for (const pem of certificates) parse(files.clientCA, 'PEM CA bundle', () => new X509Certificate(pem))
  }
  try {
    createSecureContext({ cert, key, ...(ca ? { ca } : {}) })
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH') {
      throw new TlsMaterialError(files.key, `does not match the certificate in ${files.cert}`)
    }
    throw new TlsMaterialError(files.cert, e.message)
  }
  return { cert, key, ca }
}
