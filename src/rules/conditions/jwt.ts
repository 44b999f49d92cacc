// match.jwt: issuer and claims of the verified token.
import type { MatchConfig } from '../../config/schema.ts'
import { evidenceOf } from '../../identity/sources/source.ts'
import type { ConnectionInfo, EvidenceSet, JwtEvidence, RequestInfo } from '../../types.ts'
import { type CompiledPattern, compilePattern } from '../pattern.ts'
import { addCaptures, type Condition, matchInto, type Scratch, show } from './condition.ts'

/** All ways to read a dotted claim path: "kubernetes.io.namespace" may be {"kubernetes.io": {namespace}}. */
function claimPaths(path: string): string[][] {
  const parts = path.split('.')
  if (parts.length > 8) return [[path], parts]
  const out: string[][] = []
  const walk = (i: number, acc: string[]) => {
    if (i === parts.length) {
      out.push(acc)
      return
    }
    for (let j = parts.length; j > i; j--) walk(j, [...acc, parts.slice(i, j).join('.')])
  }
  walk(0, [])
  return out
}

function readClaim(claims: Readonly<Record<string, unknown>>, paths: readonly string[][]): unknown {
  for (const keys of paths) {
    let v: unknown = claims
    for (const k of keys) {
      if (v === null || typeof v !== 'object' || Array.isArray(v) || !Object.hasOwn(v, k)) {
        v = undefined
        break
      }
      v = (v as Record<string, unknown>)[k]
    }
    if (v !== undefined) return v
  }
  return undefined
}

export class JwtCondition implements Condition {
  readonly label = 'jwt'
  readonly perRequest = false
  private readonly issuer: CompiledPattern | undefined
  private readonly claims: { name: string; paths: string[][]; p: CompiledPattern }[]
  constructor(cfg: NonNullable<MatchConfig['jwt']>) {
    this.issuer = cfg.issuer !== undefined ? compilePattern(cfg.issuer) : undefined
    this.claims = Object.entries(cfg.claims ?? {}).map(([name, p]) => ({
      name,
      paths: claimPaths(name),
      p: compilePattern(p),
    }))
  }
  get captures(): readonly string[] {
    return [...(this.issuer?.captures ?? []), ...this.claims.flatMap((c) => c.p.captures)]
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const jwt = evidenceOf<JwtEvidence>(ev, 'jwt')
    if (!jwt) {
      s.reason = 'jwt: no verified token'
      return false
    }
    if (this.issuer && !matchInto(this.issuer, jwt.issuer, 'jwt.issuer', s)) return false
    for (const c of this.claims) {
      const v = readClaim(jwt.claims, c.paths)
      const label = `jwt.claims.${c.name}`
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
        if (!matchInto(c.p, String(v), label, s)) return false
      } else if (Array.isArray(v)) {
        // a list claim (aud, groups) matches when any element does
        let hit = false
        for (const item of v) {
          if (typeof item !== 'string') continue
          const m = c.p.match(item)
          if (m) {
            if (c.p.captures.length) addCaptures(s, m)
            hit = true
            break
          }
        }
        if (!hit) {
          s.reason = `${label}: no element matches ${show(c.p.source)}`
          return false
        }
      } else {
        s.reason = v === undefined ? `${label}: claim not present` : `${label}: not a string`
        return false
      }
    }
    return true
  }
}
