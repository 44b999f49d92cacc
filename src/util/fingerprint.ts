import { hash } from 'node:crypto'

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
