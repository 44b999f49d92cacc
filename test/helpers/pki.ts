// Real X.509 material for tests, made with the openssl CLI (EC P-256: fast to generate).
import { execFile } from 'node:child_process'
import { createPrivateKey, sign } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { AsnConvert } from '@peculiar/asn1-schema'
import { Certificate, Time } from '@peculiar/asn1-x509'
import { scratchDir } from './scratch.ts'

const run = promisify(execFile)
let serial = 1000

export interface KeyPair {
  certPem: string
  keyPem: string
  certFile: string
  keyFile: string
}
export interface CA extends KeyPair {
  dir: string
  name: string
}

export interface LeafOptions {
  cn?: string
  /** the whole subject in openssl's -subj form (UTF-8 allowed), e.g. "/O=Müller/CN=Ω"; wins over cn */
  subject?: string
  uriSans?: string[]
  dnsSans?: string[]
  ipSans?: string[]
  emailSans?: string[]
  /** extension lines in openssl's syntax, as they are: e.g. `subjectAltName=DER:04:00` for a broken encoding */
  extensions?: string[]
  /** negative → already expired */
  days?: number
  /** a validity that starts at this time (in the future: not yet valid) and lasts `days` (default 7) from it */
  notBefore?: Date
  /** add extendedKeyUsage serverAuth (for server certs) */
  server?: boolean
  /** the extendedKeyUsage line's value as it is (e.g. `serverAuth`), instead of the one `server` picks */
  extendedKeyUsage?: string
  /** a CA certificate (an intermediate), with no extended key usage unless `extendedKeyUsage` says */
  intermediate?: boolean
}

export async function createCA(name = 'test-ca', dir?: string): Promise<CA> {
  const d = dir ?? (await scratchDir('pki'))
  const certFile = join(d, `${name}.crt`)
  const keyFile = join(d, `${name}.key`)
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    certFile,
    '-subj',
    `/CN=${name}`,
    '-days',
    '30',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ])
  return {
    dir: d,
    name,
    certFile,
    keyFile,
    certPem: await readFile(certFile, 'utf8'),
    keyPem: await readFile(keyFile, 'utf8'),
  }
}

/** An intermediate CA issued by `ca` (keys in the same directory), optionally limited in extended key usage. */
export async function issueIntermediateCA(ca: CA, name: string, extendedKeyUsage?: string): Promise<CA> {
  const pair = await issueCert(ca, {
    cn: name,
    intermediate: true,
    ...(extendedKeyUsage ? { extendedKeyUsage } : {}),
  })
  return { ...pair, dir: ca.dir, name }
}

export async function issueCert(ca: CA, opts: LeafOptions = {}): Promise<KeyPair> {
  const id = `leaf-${++serial}`
  const keyFile = join(ca.dir, `${id}.key`)
  const csrFile = join(ca.dir, `${id}.csr`)
  const certFile = join(ca.dir, `${id}.crt`)
  const extFile = join(ca.dir, `${id}.ext`)
  // one SAN per line of a section: there a value is taken whole, so it may hold commas (`URI:a, DNS:b` is
  // one URI); backslashes keep openssl's config syntax (quotes, `$`, `#`) literal
  const sans = [
    ...(opts.uriSans ?? []).map((v, i) => `URI.${i} = ${opensslConfValue(v)}`),
    ...(opts.dnsSans ?? []).map((v, i) => `DNS.${i} = ${opensslConfValue(v)}`),
    ...(opts.ipSans ?? []).map((v, i) => `IP.${i} = ${opensslConfValue(v)}`),
    ...(opts.emailSans ?? []).map((v, i) => `email.${i} = ${opensslConfValue(v)}`),
  ]
  const eku = opts.intermediate
    ? opts.extendedKeyUsage
    : (opts.extendedKeyUsage ?? (opts.server ? 'serverAuth,clientAuth' : 'clientAuth'))
  const ext = [
    ...(opts.intermediate
      ? ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign']
      : ['basicConstraints=CA:FALSE']),
    ...(eku ? [`extendedKeyUsage=${eku}`] : []),
    ...(opts.extensions ?? []),
    ...(sans.length ? ['subjectAltName=@sans', '[sans]', ...sans] : []),
  ]
  await writeFile(extFile, ext.join('\n') + '\n')
  const subj = opts.subject ?? (opts.cn ? `/CN=${opts.cn}` : '/O=nhi-test')
  await run('openssl', [
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    csrFile,
    '-subj',
    subj,
    // UTF-8 subjects stay UTF8String fields instead of bytes read as Latin-1
    ...(/[^\x00-\x7f]/.test(subj) ? ['-utf8'] : []),
  ])
  if (opts.notBefore) {
    await signWithStartDate(ca, id, csrFile, extFile, certFile, opts.notBefore, opts.days ?? 7)
    return {
      certFile,
      keyFile,
      certPem: await readFile(certFile, 'utf8'),
      keyPem: await readFile(keyFile, 'utf8'),
    }
  }
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    csrFile,
    '-CA',
    ca.certFile,
    '-CAkey',
    ca.keyFile,
    '-set_serial',
    String(serial),
    '-days',
    String(opts.days ?? 7),
    '-extfile',
    extFile,
    '-out',
    certFile,
  ])
  return {
    certFile,
    keyFile,
    certPem: await readFile(certFile, 'utf8'),
    keyPem: await readFile(keyFile, 'utf8'),
  }
}

/** `openssl x509` of OpenSSL 3.0 sets no start date: `openssl ca` does, with a throwaway database of its own */
async function signWithStartDate(
  ca: CA,
  id: string,
  csrFile: string,
  extFile: string,
  certFile: string,
  notBefore: Date,
  days: number,
): Promise<void> {
  const dir = join(ca.dir, `${id}-ca`)
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'index.txt'), '')
  const conf = join(dir, 'ca.cnf')
  await writeFile(
    conf,
    [
      '[ca]',
      'default_ca = local',
      '[local]',
      `dir = ${dir}`,
      'database = $dir/index.txt',
      'new_certs_dir = $dir',
      `serial = $dir/serial`,
      'default_md = sha256',
      'policy = anything',
      'unique_subject = no',
      '[anything]',
      'commonName = optional',
      'organizationName = optional',
      '',
    ].join('\n'),
  )
  await writeFile(join(dir, 'serial'), `${String(serial).padStart(2, '0')}\n`)
  const asn1Time = (d: Date) => `${d.toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`
  await run('openssl', [
    'ca',
    '-batch',
    '-notext',
    '-config',
    conf,
    '-cert',
    ca.certFile,
    '-keyfile',
    ca.keyFile,
    '-in',
    csrFile,
    '-out',
    certFile,
    '-extfile',
    extFile,
    '-startdate',
    asn1Time(notBefore),
    '-enddate',
    asn1Time(new Date(notBefore.getTime() + days * 86_400_000)),
  ])
}

function opensslConfValue(v: string): string {
  return v.replace(/[\\"'$#;]/g, '\\$&')
}

/** A CA plus a server cert for 127.0.0.1/localhost, ready for an https listener. */
export async function createServerPki(): Promise<{ ca: CA; server: KeyPair }> {
  const ca = await createCA('server-ca')
  const server = await issueCert(ca, { cn: 'localhost', dnsSans: ['localhost'], server: true })
  // IP SAN for 127.0.0.1
  return { ca, server }
}

/**
 * The sidecar's `listen` for mTLS tests: a plain listener and a TLS one with `server`'s certificate that asks
 * for client certificates of `clientCa` (`clientCert: required` refuses a client without one), both on
 * ephemeral loopback ports.
 */
export function mtlsListen(server: KeyPair, clientCa: CA, clientCert?: 'optional' | 'required') {
  return {
    http: '127.0.0.1:0',
    https: {
      address: '127.0.0.1:0',
      cert: server.certFile,
      key: server.keyFile,
      clientCA: clientCa.certFile,
      ...(clientCert !== undefined ? { clientCert } : {}),
    },
  }
}

/**
 * the key types a generated chain mixes: RSA-2048, EC P-256 and Ed25519, and the ones a TLS stack may refuse
 * (RSA keys of 1024 and 512 bits, EC keys on other curves than P-256 or with their parameters written out)
 */
export type KeyType =
  | 'rsa'
  | 'ec'
  | 'ed25519'
  | 'rsa-1024'
  | 'rsa-512'
  | 'ec-p384'
  | 'ec-secp256k1'
  | 'ec-brainpoolP256r1'
  | 'ec-wtls6'
  | 'ec-p256-explicit'

export interface KeyFiles {
  type: KeyType
  keyFile: string
  /** the public half, for `openssl x509 -new -force_pubkey` */
  pubFile: string
  keyPem: string
}

const GENPKEY: Record<KeyType, string[]> = {
  rsa: ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
  ec: ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
  ed25519: ['-algorithm', 'ED25519'],
  'rsa-1024': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024'],
  'rsa-512': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:512'],
  'ec-p384': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'],
  'ec-secp256k1': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:secp256k1'],
  'ec-brainpoolP256r1': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:brainpoolP256r1'],
  // a 112-bit curve whose name does not say its size (secp112r1's parameters under the WTLS OID)
  'ec-wtls6': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:wap-wsg-idm-ecid-wtls6'],
  // P-256 with its parameters written out in the key rather than named by OID
  'ec-p256-explicit': [
    '-algorithm',
    'EC',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-pkeyopt',
    'ec_param_enc:explicit',
  ],
}

/** A key pair of `type` in `dir`, private and public halves as PEM files. */
export async function generateKey(dir: string, name: string, type: KeyType): Promise<KeyFiles> {
  const keyFile = join(dir, `${name}.key`)
  const pubFile = join(dir, `${name}.pub`)
  await run('openssl', ['genpkey', ...GENPKEY[type], '-out', keyFile])
  await run('openssl', ['pkey', '-in', keyFile, '-pubout', '-out', pubFile])
  return { type, keyFile, pubFile, keyPem: await readFile(keyFile, 'utf8') }
}

export interface CertificateSpec {
  /** openssl's -subj form, e.g. "/CN=leaf-1" */
  subject: string
  key: KeyFiles
  /** the issuing certificate and its key; absent: self-signed with `key` */
  issuer?: { certFile: string; key: KeyFiles }
  /** the extension lines, in openssl's config syntax (sections such as `[sans]` after them) */
  extensions: string[]
  /** the digest of the issuer's signature (RSA and EC issuers: Ed25519 has its own) */
  digest?: 'sha1' | 'sha256'
  /** dates other than "from now for 30 days": re-signed after openssl made it, which OpenSSL 3.0 cannot date */
  validity?: { notBefore: Date; notAfter: Date }
  serial: number
}

/**
 * Any certificate `openssl x509 -new` can make: self-signed or issued, with the extensions, digest and key type
 * given, and, unlike `issueCert`, any validity (written into the DER and signed again by the issuer's key).
 */
export async function makeCertificate(
  dir: string,
  name: string,
  spec: CertificateSpec,
): Promise<{ certFile: string; certPem: string }> {
  const certFile = join(dir, `${name}.crt`)
  const extFile = join(dir, `${name}.ext`)
  await writeFile(extFile, ['[v3]', ...spec.extensions, ''].join('\n'))
  const signer = spec.issuer?.key ?? spec.key
  await run('openssl', [
    'x509',
    '-new',
    '-subj',
    spec.subject,
    ...(spec.issuer
      ? ['-force_pubkey', spec.key.pubFile, '-CA', spec.issuer.certFile, '-CAkey', spec.issuer.key.keyFile]
      : ['-key', spec.key.keyFile]),
    '-set_serial',
    String(spec.serial),
    '-days',
    '30',
    '-extfile',
    extFile,
    '-extensions',
    'v3',
    ...(signer.type === 'ed25519' ? [] : [`-${spec.digest ?? 'sha256'}`]),
    '-out',
    certFile,
  ])
  if (spec.validity) {
    const pem = await readFile(certFile, 'utf8')
    await writeFile(certFile, redated(pem, signer, spec.validity))
  }
  return { certFile, certPem: await readFile(certFile, 'utf8') }
}

/** signature algorithm OIDs → the digest node:crypto signs with (null: Ed25519, which has its own) */
const SIGNATURE_DIGESTS: Record<string, string | null> = {
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.10045.4.1': 'sha1',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.3.101.112': null,
}

/** `pem` with another validity, signed again by `signer` with the certificate's own signature algorithm */
function redated(pem: string, signer: KeyFiles, validity: { notBefore: Date; notAfter: Date }): string {
  const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64')
  const cert = AsnConvert.parse(der, Certificate)
  cert.tbsCertificate.validity.notBefore = new Time(validity.notBefore)
  cert.tbsCertificate.validity.notAfter = new Time(validity.notAfter)
  const digest = SIGNATURE_DIGESTS[cert.signatureAlgorithm.algorithm]
  if (digest === undefined) throw new Error(`cannot re-sign ${cert.signatureAlgorithm.algorithm}`)
  const tbs = Buffer.from(AsnConvert.serialize(cert.tbsCertificate))
  cert.signatureValue = Uint8Array.from(sign(digest, tbs, createPrivateKey(signer.keyPem))).buffer
  const body = Buffer.from(AsnConvert.serialize(cert)).toString('base64')
  return `-----BEGIN CERTIFICATE-----\n${body.replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END CERTIFICATE-----\n`
}
