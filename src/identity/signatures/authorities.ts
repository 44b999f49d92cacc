// The host names this service is reached by (signedAgents.authorities). A Web Bot Auth signature covers the
// `@authority` its agent addressed, and the proxy checks it against the request's own Host: without this
// list, a signature an agent made for another site, replayed here by that site's operator with that site's
// Host, would verify as the agent (and an upstream that ignores Host would serve it).
import { isIPv4 } from 'node:net'

export interface Authority {
  /** lower case, IDNA (punycode) as the URL parser writes it, without a trailing dot */
  host: string
  /** decimal without leading zeros; undefined: any port */
  port?: string
  /** `*.host`: any name below host, at one or more levels, not host itself */
  wildcard: boolean
}

export const AUTHORITY_HINT = 'write the host name alone: shop.example, shop.example:8443 or *.shop.example'

/** The entry, or why it is not one (a config error). */
export function parseAuthority(raw: string): Authority | { error: string } {
  if (raw === '') return { error: 'empty authority' }
  if (/\s/.test(raw)) return { error: `authority "${raw}" contains whitespace` }
  if (raw.includes('://')) return { error: `authority "${raw}" has a scheme` }
  if (/[/?#@\\]/.test(raw)) {
    return { error: `authority "${raw}" is not a host name: no path, query or user info` }
  }
  const wildcard = raw.startsWith('*.')
  const rest = wildcard ? raw.slice(2) : raw
  if (rest.includes('*')) return { error: `authority "${raw}": only a leading "*." is a wildcard` }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(rest)
  if (!m) return { error: `authority "${raw}" is not HOST or HOST:PORT (an IPv6 address in brackets)` }
  const port = m[2] === undefined ? undefined : Number(m[2])
  if (port !== undefined && (port < 1 || port > 65_535)) {
    return { error: `authority "${raw}": port must be 1 to 65535` }
  }
  let host: string
  try {
    host = withoutTrailingDot(new URL(`http://${m[1]}`).hostname)
  } catch {
    return { error: `authority "${raw}" is not a valid host name` }
  }
  if (host === '') return { error: `authority "${raw}" is not a valid host name` }
  if (wildcard && (host.startsWith('[') || isIPv4(host))) {
    return { error: `authority "${raw}": a wildcard needs a domain name, not an address` }
  }
  return port === undefined ? { host, wildcard } : { host, port: String(port), wildcard }
}

export class Authorities {
  private readonly entries: Authority[] = []

  /** entries that do not parse match nothing (the config check reports them) */
  constructor(list: readonly string[]) {
    for (const raw of list) {
      const a = parseAuthority(raw)
      if (!('error' in a)) this.entries.push(a)
    }
  }

  /**
   * Whether the authority of `url` (the request URL the signature is checked against, whose host is what
   * `@authority` covers) is one of the list. A URL without a port is at its scheme's default port.
   */
  allows(url: URL): boolean {
    const host = withoutTrailingDot(url.hostname)
    const port = url.port !== '' ? url.port : url.protocol === 'https:' ? '443' : '80'
    for (const a of this.entries) {
      if (a.port !== undefined && a.port !== port) continue
      if (a.wildcard ? host.length > a.host.length + 1 && host.endsWith(`.${a.host}`) : host === a.host) {
        return true
      }
    }
    return false
  }
}

// `shop.example.` is the same DNS name as `shop.example`
const withoutTrailingDot = (host: string) => (host.endsWith('.') ? host.slice(0, -1) : host)
