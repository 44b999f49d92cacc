// The effective config served on /config. Nothing secret is in the config itself (keys live in files), but
// api-key hashes and any secret-looking field are still masked: a hash of a weak key is guessable.
const SECRET_FIELD = /(secret|password|token|sha256|key)$/i
const KEEP = new Set(['bearerTokenFile', 'secretFile', 'key', 'maxIdentities', 'apiKey'])

export function redactConfig(value: unknown, field = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => redactConfig(v, field))
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) {
      out[k] =
        typeof v === 'string' && SECRET_FIELD.test(k) && !KEEP.has(k) ? '<redacted>' : redactConfig(v, k)
    }
    return out
  }
  return value
}
