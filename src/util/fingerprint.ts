import { createHash } from 'node:crypto'

/** sha256 prefix of a credential: enough to correlate, useless to replay. Raw credentials never leave memory. */
export function fingerprint(secret: string | Uint8Array, hexChars = 16): string {
  return createHash('sha256').update(secret).digest('hex').slice(0, hexChars)
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}
