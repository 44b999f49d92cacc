// The `upstream` setting: which origin requests go to and how (docs/reference.md "upstream").
import { isIP } from 'node:net'
import { type ConnectionOptions, checkServerIdentity, type PeerCertificate } from 'node:tls'
import { redactUrl } from '../config/redact.ts'

export interface Upstream {
  /** http1: HTTP/1.1 (http:, https:, unix:); h2: HTTP/2 with prior knowledge (h2c:) or by ALPN over TLS (h2:) */
  protocol: 'http1' | 'h2'
  tls: boolean
  /** unix: upstreams, the socket's path */
  socketPath?: string
  /** the key forwarders keep connections by */
  origin: string
  /** base path without trailing slash ('' for '/') */
  basePath: string
  host: string
  port: number
}

const SCHEMES: Record<string, { protocol: Upstream['protocol']; tls: boolean }> = {
  'http:': { protocol: 'http1', tls: false },
  'https:': { protocol: 'http1', tls: true },
  'h2c:': { protocol: 'h2', tls: false },
  'h2:': { protocol: 'h2', tls: true },
}

/** Parses and checks an upstream URL; throws with a readable message when it is not usable. */
export function parseUpstream(url: string): Upstream {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new Error(`invalid upstream URL "${redactUrl(url)}"`)
  }
  if (u.search || u.hash || u.username || u.password) {
    throw new Error(`invalid upstream URL "${redactUrl(url)}": no query, fragment or credentials allowed`)
  }
  if (u.protocol === 'unix:') {
    // unix:/run/app.sock — HTTP/1.1 over a Unix domain socket, no base path
    if (!u.pathname.startsWith('/'))
      throw new Error(`invalid upstream URL "${redactUrl(url)}": unix: needs an absolute socket path`)
    const socketPath = decodeURIComponent(u.pathname)
    return {
      protocol: 'http1',
      tls: false,
      socketPath,
      origin: `unix:${socketPath}`,
      basePath: '',
      host: 'localhost',
      port: 0,
    }
  }
  const scheme = SCHEMES[u.protocol]
  // `localhost:3000` parses as scheme "localhost:" with path "3000": name the scheme that was left out
  if (scheme === undefined && /^[^/:?#]+:\d+(\/[^?#]*)?$/.test(url)) {
    throw new Error(`invalid upstream URL "${url}": no scheme (hint: http://${url})`)
  }
  if (scheme === undefined) {
    throw new Error(
      `invalid upstream URL "${redactUrl(url)}": only http:, https:, h2c:, h2: and unix: are supported`,
    )
  }
  const basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/+$/, '')
  const port = u.port ? Number(u.port) : scheme.tls ? 443 : 80
  const host = u.hostname.replace(/^\[|\]$/g, '')
  // URL gives no origin for non-special schemes
  const origin = `${u.protocol}//${u.host}`
  return { protocol: scheme.protocol, tls: scheme.tls, origin, basePath, host, port }
}

/**
 * upstreamTls options for a connection to `host`. The TLS server name is upstreamTls's `servername`, else the
 * URL's host, and '' (no SNI) when that is an IP address (RFC 6066 §3: SNI carries no IP literal; Node would
 * send one and warn DEP0123); the certificate is then checked against the address, a configured one by the
 * `checkServerIdentity` given here. Never the request's Host header: the client sets that.
 */
export function upstreamTlsFor<T extends ConnectionOptions>(
  host: string,
  tls: T,
): T & { servername: string } {
  const configured = tls.servername
  const name = configured || host
  const out = { ...tls, servername: isIP(name) === 0 ? name : '' }
  if (configured && isIP(configured) !== 0)
    out.checkServerIdentity = (_host: string, cert: PeerCertificate) => checkServerIdentity(configured, cert)
  return out
}
