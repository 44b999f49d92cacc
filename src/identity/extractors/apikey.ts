// API keys: only sha256 hashes are configured; the presented key is hashed and looked up, and the hit is
// confirmed with a constant-time comparison of the digests.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { Config } from '../../config/schema.ts'
import type { ApiKeyEvidence, ConnectionInfo, Extractor, Failure, Kind, RequestInfo } from '../../types.ts'
import { fingerprint } from '../../util/fingerprint.ts'

interface KeyEntry {
  name: string
  kind?: Kind
  team?: string
  digest: Buffer
}

export class ApiKeyExtractor implements Extractor {
  readonly source = 'apikey' as const
  readonly header: string
  private readonly byHash = new Map<string, KeyEntry>()

  constructor(cfg: Config['apiKeys']) {
    this.header = cfg.header.toLowerCase()
    for (const k of cfg.keys) {
      const hex = k.sha256.toLowerCase()
      this.byHash.set(hex, {
        name: k.name,
        digest: Buffer.from(hex, 'hex'),
        ...(k.kind ? { kind: k.kind } : {}),
        ...(k.team ? { team: k.team } : {}),
      })
    }
  }

  extract(req: RequestInfo, _conn?: ConnectionInfo): ApiKeyEvidence | Failure | undefined {
    const raw = req.headers[this.header]
    const key = Array.isArray(raw) ? raw[0] : raw
    if (!key) return undefined
    const digest = createHash('sha256').update(key).digest()
    const fp = fingerprint(key)
    const entry = this.byHash.get(digest.toString('hex'))
    if (!entry || !timingSafeEqual(digest, entry.digest)) {
      return { failed: true, source: 'apikey', reason: 'apikey_unknown', fingerprint: fp }
    }
    const ev: ApiKeyEvidence = { source: 'apikey', verified: true, name: entry.name, fingerprint: fp }
    if (entry.kind) ev.kind = entry.kind
    if (entry.team) ev.team = entry.team
    return ev
  }
}

export function createApiKeyExtractor(cfg: Config['apiKeys']): ApiKeyExtractor {
  return new ApiKeyExtractor(cfg)
}
