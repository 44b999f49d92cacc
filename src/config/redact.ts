// The effective config served on /config. Nothing secret is in the config itself (keys live in files), but
// api-key hashes and any secret-looking field are still masked: a hash of a weak key is guessable.
import { normalizeHeaderName } from '../util/header-names.ts'
import { isRecord } from '../util/is-record.ts'

const SECRET_FIELD = /(secret|password|token|sha256|key)$/i
const KEEP = new Set(['bearerTokenFile', 'secretFile', 'key', 'maxIdentities', 'apiKey'])

/** query parameters that carry credentials in URLs (signed URLs, tokens in links) */
const SECRET_PARAM =
  /^(access_token|id_token|refresh_token|token|api_?key|key|secret|client_secret|password|passwd|pwd|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|auth|authorization|code)$/i

/** a query parameter whose value is a credential, by its (decoded) name */
function isSecretParam(name: string): boolean {
  return SECRET_PARAM.test(name) || SECRET_FIELD.test(name)
}

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i

/**
 * Masks the userinfo and the secret-looking query parameters of a URL-shaped string; anything else is returned
 * as is. The userinfo is everything from `://` to the text's last `@`, not what a URL parser makes of it: a
 * password holding a `#`, `?` or `/` that is not percent-encoded ends the authority early for the parser, which
 * then reads the rest of the password as a port, a path, a query or a fragment, or refuses the URL (one it
 * refuses is most likely quoted in a message saying why). An `@` in a path or query is masked with it: a
 * credential shown is worse than a path cut short.
 */
export function redactUrl(text: string): string {
  const scheme = SCHEME.exec(text)
  if (!scheme) return text
  const at = text.lastIndexOf('@')
  const masked = at === -1 ? text : `${scheme[0]}redacted${text.slice(at)}`
  let u: URL
  try {
    u = new URL(masked)
  } catch {
    return masked
  }
  let changed = false
  for (const name of new Set(u.searchParams.keys())) {
    if (isSecretParam(name)) {
      u.searchParams.set(name, 'redacted')
      changed = true
    }
  }
  return changed ? u.toString() : masked
}

/**
 * A URL the proxy has parsed and uses (a key directory it fetches), as a metric label: what it fetches, less
 * its credentials (userinfo, secret query parameters). Unlike redactUrl, which masks whatever text could hide
 * a password, it keeps an `@` in the path (`https://host/@agent/keys`): two directories must not share a label.
 */
export function urlLabel(text: string, url: URL): string {
  const u = new URL(url.href)
  const hadUserinfo = u.username !== '' || u.password !== ''
  let secretParam = false
  for (const name of new Set(u.searchParams.keys())) {
    if (isSecretParam(name)) {
      u.searchParams.set(name, 'redacted')
      secretParam = true
    }
  }
  // as configured, when there is nothing to take out
  if (!hadUserinfo && !secretParam) return text
  u.username = ''
  u.password = ''
  const href = u.toString()
  return hadUserinfo ? href.replace('://', '://redacted@') : href
}

/** a URL inside a message: up to a blank or a quote, the marks messages set around a value */
const URL_IN_TEXT = /[a-z][a-z0-9+.-]*:\/\/[^\s'"<>`]+/gi

/**
 * A message that may quote URLs (an error naming the one it could not use), with each masked as redactUrl
 * masks it. `urls` are the URLs the message may quote as given: each is replaced whole first, so a password
 * holding a blank or a quote, which would end the URL as found in the text, is masked too.
 */
export function redactText(text: string, urls: readonly (string | undefined)[] = []): string {
  let out = text
  const known = [...new Set(urls.filter((u): u is string => u !== undefined && u !== ''))]
  // the longest first: a base URL is the start of the signal URLs made from it
  for (const url of known.sort((a, b) => b.length - a.length)) out = out.split(url).join(redactUrl(url))
  return out.replace(URL_IN_TEXT, (url) => redactUrl(url))
}

/** Field names that are secrets wherever they appear, whatever their value's type. */
const SECRET_NAME =
  /^(key|secret|token|password|passphrase)$|(?:Key|Secret|Token|Password|Passphrase)$|[_-](?:key|secret|token|password)$/
export const REDACTED = '<redacted>'
/** deeper than any config: a cycle or a hostile value is cut off instead of recursing without end */
const MAX_DEPTH = 32

function isSecretField(name: string, value: unknown): boolean {
  if (value === null || typeof value === 'object') return false
  if (SECRET_NAME.test(name)) return true
  return typeof value === 'string' && SECRET_FIELD.test(name) && !KEEP.has(name)
}

/**
 * Request header names that hold a credential, by the look of them, whoever defined them: Authorization,
 * Proxy-Authorization, Cookie, X-Api-Key, X-Auth-Token, Api-Key, X-Goog-Api-Key, X-Amz-Security-Token,
 * X-Session-Id, X-Client-Secret… (a header's value is shown only when its name says nothing of the kind)
 */
const CREDENTIAL_NAME =
  /(?:^|-)(?:auth|authorization|token|secret|password|passwd|pwd|credentials?|session|cookie|api-?key|key)(?:-|$)/

/**
 * A request header's value for display: credential headers masked, the configured `apiKeys.header` among
 * them. Names compare as an upstream framework merges them (`X_API_KEY` is x-api-key to a CGI/WSGI/Rack app).
 */
export function redactHeader(name: string, value: string, apiKeyHeader?: string): string {
  return isCredentialHeader(name, apiKeyHeader) ? REDACTED : value
}

/** Whether a request header's value is a credential, as redactHeader judges it (its name, or apiKeys.header). */
export function isCredentialHeader(name: string, apiKeyHeader?: string): boolean {
  const n = normalizeHeaderName(name)
  return CREDENTIAL_NAME.test(n) || (apiKeyHeader !== undefined && n === normalizeHeaderName(apiKeyHeader))
}

/**
 * A request target for display: the values of query parameters that carry credentials (access_token, sig,
 * X-Amz-Credential…; SECRET_PARAM) masked, the rest as given.
 */
export function redactTarget(target: string): string {
  const q = target.indexOf('?')
  if (q === -1) return target
  const params = target
    .slice(q + 1)
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=')
      if (eq === -1) return pair
      let name = pair.slice(0, eq)
      try {
        name = decodeURIComponent(name.replace(/\+/g, ' '))
      } catch {
        // a malformed escape: judged as written
      }
      return isSecretParam(name) ? `${pair.slice(0, eq)}=redacted` : pair
    })
  return `${target.slice(0, q)}?${params.join('&')}`
}

/** a config's apiKeys.header, whose values are credentials wherever a rule names that header */
function apiKeyHeaderOf(config: unknown): string | undefined {
  const apiKeys = isRecord(config) ? config['apiKeys'] : undefined
  const header = isRecord(apiKeys) ? apiKeys['header'] : undefined
  return typeof header === 'string' ? header : undefined
}

/**
 * The one secret masker for anything shown to an operator (/config, diagnostics): secret-named fields and
 * every value of a `headers` map become "<redacted>", so does a rule's `header` pattern for a credential
 * header (redactHeader), credentials in URL-shaped strings are masked (redactUrl). Idempotent.
 */
export function redactConfig(value: unknown): unknown {
  return redact(value, 0, apiKeyHeaderOf(value))
}

function redact(value: unknown, depth: number, apiKeyHeader: string | undefined): unknown {
  if (depth > MAX_DEPTH) return null
  if (typeof value === 'string') return redactUrl(value)
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1, apiKeyHeader))
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) {
      // header values (otlp.headers) are credentials more often than not: a collector's token
      if (k === 'headers' && v !== null && typeof v === 'object') {
        out[k] = Object.fromEntries(Object.keys(v).map((name) => [name, REDACTED]))
        continue
      }
      // a rule may match a credential header without capturing it, and a pattern without a wildcard is the
      // credential itself (`authorization: Bearer <static token>`)
      if (k === 'header' && isRecord(v)) {
        out[k] = Object.fromEntries(
          Object.entries(v).map(([name, pattern]) => [
            name,
            isSecretField(name, pattern)
              ? REDACTED
              : typeof pattern === 'string'
                ? redactHeader(name, redactUrl(pattern), apiKeyHeader)
                : redact(pattern, depth + 2, apiKeyHeader),
          ]),
        )
        continue
      }
      out[k] = isSecretField(k, v) ? REDACTED : redact(v, depth + 1, apiKeyHeader)
    }
    return out
  }
  return value
}
