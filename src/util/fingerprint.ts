import { createHmac, hash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'

/** hex characters of a fingerprint: 64 bits of the sha256 */
export const FINGERPRINT_HEX_CHARS = 16

/** sha256 prefix of a credential: enough to correlate, useless to replay. Raw credentials never leave memory. */
export function fingerprint(secret: string | Uint8Array, hexChars = FINGERPRINT_HEX_CHARS): string {
  return hash('sha256', secret, 'hex').slice(0, hexChars)
}

export function sha256Hex(data: string | Uint8Array): string {
  // one-shot hash: half the cost of createHash().update().digest() on the per-request token path
  return hash('sha256', data, 'hex')
}

/**
 * A fingerprint under a key (HMAC-SHA256 prefix), for credentials a person may have chosen: an api key's
 * plain sha256 prefix lets anyone who reads the audit test guesses of a weak key offline, one hash each.
 * A token or a certificate carries a signature's worth of entropy and keeps the plain sha256 prefix.
 */
export function keyedFingerprint(key: Uint8Array, data: Uint8Array): string {
  return createHmac('sha256', key).update(data).digest('hex').slice(0, FINGERPRINT_HEX_CHARS)
}

/**
 * The pod's fingerprint key when the config names no file: random, made once by the process that starts
 * first (the only process, or the primary of `workers: N`); a worker is given its primary's with its config
 * (`usePodFingerprintKey`), so that every process of a pod fingerprints a key alike.
 */
let podKey: Uint8Array | undefined

export function podFingerprintKey(): Uint8Array {
  podKey ??= randomBytes(32)
  return podKey
}

/** a worker: the primary's key, before the worker builds its first pipeline */
export function usePodFingerprintKey(key: Uint8Array): void {
  podKey = key
}

/**
 * The key in a fingerprint key file (`apiKeys.fingerprintKeyFile`): its bytes less one trailing newline, at
 * least 16 of them. Shared by the replicas of a service, it makes their fingerprints of one key agree.
 */
export async function readFingerprintKeyFile(path: string): Promise<Uint8Array> {
  const bytes = await readFile(path)
  const end =
    bytes.at(-1) === 0x0a ? (bytes.at(-2) === 0x0d ? bytes.length - 2 : bytes.length - 1) : bytes.length
  if (end < 16) throw new Error(`${path} holds ${end} bytes; a fingerprint key needs at least 16`)
  return bytes.subarray(0, end)
}
