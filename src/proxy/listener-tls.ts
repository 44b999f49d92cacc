// The https listener's certificate, key and client CA bundle, read at start and again while serving:
// cert-manager and Kubernetes Secret volumes rotate them in place, and a listener that kept its first
// certificate would serve it past its expiry. Both reads go through the same checks, so a start refuses
// what a rotation would.
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createSecureContext } from 'node:tls'
import { readProblem } from '../config/loader.ts'

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

/** why TLS material was refused, and the setting and file it concerns (never any key material) */
export class TlsMaterialError extends Error {
  constructor(
    readonly setting: keyof ListenerTlsFiles,
    readonly file: string,
    message: string,
  ) {
    super(message)
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g

/**
 * Reads the files and checks that they make a secure context the listener can serve with. A configured
 * client CA must hold a certificate: an empty bundle would start a listener that silently asks for no
 * client certificate, and, once serving (client certificates are requested for good), would leave Node
 * verifying them against its default public roots or against nothing. So it is refused, at start and on
 * rotation alike.
 */
export async function loadListenerTls(files: ListenerTlsFiles): Promise<ListenerTlsMaterial> {
  const read = (setting: keyof ListenerTlsFiles, file: string) =>
    readFile(file, 'utf8').catch((err: unknown) => {
      throw new TlsMaterialError(setting, file, readProblem(err))
    })
  const [cert, key, ca] = await Promise.all([
    read('cert', files.cert),
    read('key', files.key),
    files.clientCA ? read('clientCA', files.clientCA) : undefined,
  ])
  const parse = (setting: keyof ListenerTlsFiles, file: string, what: string, check: () => unknown) => {
    try {
      check()
    } catch (err) {
      throw new TlsMaterialError(setting, file, `not a valid ${what}: ${(err as Error).message}`)
    }
  }
  // OpenSSL's words for a file without one ("no start line") do not say what is missing
  if (!cert.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TlsMaterialError('cert', files.cert, 'holds no certificate (no PEM CERTIFICATE block)')
  }
  parse('cert', files.cert, 'PEM certificate', () => new X509Certificate(cert))
  parse('key', files.key, 'PEM private key', () => createPrivateKey(key))
  if (files.clientCA) {
    const certificates = ca?.match(PEM_CERTIFICATE) ?? []
    if (certificates.length === 0) {
      throw new TlsMaterialError(
        'clientCA',
        files.clientCA,
        'holds no CA certificate (no PEM CERTIFICATE block)',
      )
    }
    for (const pem of certificates)
      parse('clientCA', files.clientCA, 'PEM CA bundle', () => new X509Certificate(pem))
  }
  try {
    createSecureContext({ cert, key, ...(ca ? { ca } : {}) })
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH') {
      throw new TlsMaterialError('key', files.key, `does not match the certificate in ${files.cert}`)
    }
    throw new TlsMaterialError('cert', files.cert, e.message)
  }
  return { cert, key, ca }
}
