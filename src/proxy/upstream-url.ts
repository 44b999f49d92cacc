// The `upstream` setting: which origin requests go to and how (docs/reference.md "upstream").

export interface Upstream {
  origin: string
  /** base path without trailing slash ('' for '/') */
  basePath: string
  host: string
  port: number
}

/** Parses and checks an upstream URL; throws with a readable message when it is not usable. */
export function parseUpstream(url: string): Upstream {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new Error(`invalid upstream URL "${url}"`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new Error(`invalid upstream URL "${url}": only http: and https: are supported`)
  }
  if (u.search || u.hash || u.username || u.password) {
    throw new Error(`invalid upstream URL "${url}": no query, fragment or credentials allowed`)
  }
  const basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/+$/, '')
  const port = u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80
  return { origin: u.origin, basePath, host: u.hostname.replace(/^\[|\]$/g, ''), port }
}
