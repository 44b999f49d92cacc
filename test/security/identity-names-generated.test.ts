// Identity names are built from text the client chooses: a token's claim, a certificate's CN or SPIFFE ID (over
// mTLS, or forwarded by a trusted proxy in an XFCC), a header, its user agent, and the names of api keys. The
// same identity leaves the proxy in six formats: the x-nhi-* headers to the upstream, the audit line (JSON),
// /metrics as Prometheus text and as OpenMetrics (read strictly here, checked by promtool, scraped by a real
// Prometheus), the live view (its event stream, /identities, /audit), and `inventory` through Prometheus. Whatever characters the name holds (quotes, backslashes, newlines, braces, text
// that looks like another label or line, NUL, bidi controls, lone surrogates, every plane, "%", very long
// text), every output must decode to the same identity (or to the documented replacement of it, the same in
// every output), and none may gain a line, a label or a field the name wrote into it.
//
// The names are drawn from a fixed seed (PROPERTY_SEED; FC_SEED=<n> draws another set).
import { createHash, X509Certificate } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { mtlsEcho } from '../helpers/http.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { freePort, rawExchange } from '../helpers/net.ts'
import { createCA, createServerPki, issueCert, mtlsListen } from '../helpers/pki.ts'
import { startPrometheus } from '../helpers/prometheus.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { run, skipWithout, systemTool } from '../helpers/tools.ts'

const prometheusBin = systemTool('prometheus')
const promtool = systemTool('promtool')
const ISSUER = 'https://idp.names.test'
const AUDIENCE = 'orders'
const SEED = PROPERTY_SEED

/** what a name can be made of: the format-breaking characters of every output, and text of every plane */
const HOSTILE_PIECES = [
  '"',
  '\\',
  '\n',
  '\r',
  '\r\n',
  '}',
  '{',
  ',',
  '=',
  '#',
  '%',
  '%25',
  '%61',
  '%C3%A9',
  ' ',
  '\t',
  '\0',
  '\x1b',
  '\x7f',
  '\x85',
  '\xa0',
  '\u2028',
  '\u202e',
  '\u200b',
  '\u061c',
  '\ufeff',
  '\ufffd',
  '\ud800',
  '\udfff',
  'é',
  'ß',
  '注',
  '\u{1f600}',
  '\u{10ffff}',
  '\u{e0041}',
  'a",kind="human',
  '"} 1\nnhi_requests_total{identity="x',
  '\n# EOF\n',
  '# TYPE nhi_requests_total counter',
  'ua:',
  'anonymous',
  '__overflow__',
  '\\u0000',
  '\\ud800',
  '{ns}',
  '$&',
  '",source="mtls',
]

const piece = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...HOSTILE_PIECES) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 4 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 6 }) },
)
const shortText = fc.array(piece, { minLength: 1, maxLength: 8 }).map((a) => a.join(''))
// Longer than the cuts the proxy makes (256 for a captured header, 512 for a verified name, with the name's
// digest: test/security/long-verified-names.test.ts has the names that would not fit an upstream's head).
const longText = fc
  .tuple(fc.array(piece, { minLength: 1, maxLength: 4 }), fc.integer({ min: 60, max: 400 }))
  .map(([a, n]) => a.join('').repeat(n).slice(0, 600))
const hostileText = fc.oneof({ weight: 9, arbitrary: shortText }, { weight: 1, arbitrary: longText })

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g

/** what a header value can carry: HTAB, visible ASCII and obs-text; what else the text had is dropped */
function asHeaderValue(text: string): string {
  let out = ''
  for (const c of text) {
    const code = c.codePointAt(0)!
    if (code === 0x09 || (code >= 0x20 && code <= 0xff && code !== 0x7f)) out += c
  }
  // a field value's leading and trailing whitespace is no part of it (RFC 9110 §5.5)
  out = out.replace(/^[ \t]+|[ \t]+$/g, '')
  return out === '' ? 'x' : out
}

/** a header value's bytes (one latin1 character each) as the proxy reads them: UTF-8 when they are UTF-8 */
function asUtf8Read(value: string): string {
  if (!/[\x80-\xff]/.test(value)) return value
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(value, 'latin1'))
  } catch {
    return value
  }
}

/** the first `max` UTF-16 units of a name, one fewer when the last would be half of a character */
function cutBetweenCharacters(name: string, max: number): string {
  if (name.length <= max) return name
  const last = name.charCodeAt(max - 1)
  return name.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max)
}

/** UTF-8 text without NUL (neither a config file nor a certificate subject from argv carries one) */
function asUtf8Text(text: string, max: number): string {
  const out = [...text.replace(LONE_SURROGATE, '').replace(/\0/g, '')].slice(0, max).join('')
  return out.trim() === '' ? `k${out}` : out
}

/**
 * Text as a test message or diagnostic shows it: JSON with every character outside printable ASCII escaped,
 * cut at `max` characters (a disagreement's diagnostic shows more, so that two long names show where they
 * differ). As they are, a line separator or a bidi control in a message breaks the TAP stream the runner
 * reads (it ended the test without a word).
 */
function shown(text: unknown, max = 120): string {
  const json = JSON.stringify(text) ?? String(text)
  const ascii = json.replace(/[^\x20-\x7e]/gu, (c) => {
    const code = c.codePointAt(0)!
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, '0')}`
  })
  return ascii.length > max ? `${ascii.slice(0, max)}…` : ascii
}

/** the label value the reference documents for a name: a lone surrogate written as its escape */
function labelOf(name: string): string {
  return name.replace(LONE_SURROGATE, (c) => `\\u${c.charCodeAt(0).toString(16)}`)
}

// --- a strict reader of both exposition formats ----------------------------------------------------------

interface StrictSample {
  name: string
  labels: Map<string, string>
  value: number
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/
const NUMBER = /^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)$/

/** `{a="x",b="y"}` at `at` of `line`: the labels and where they end; throws when they are not so written */
function readLabelSet(line: string, at: number): { labels: Map<string, string>; at: number } {
  const labels = new Map<string, string>()
  const fail = (why: string): never => {
    throw new Error(`${why} at ${at}`)
  }
  if (line[at] !== '{') return { labels, at }
  at++
  while (line[at] !== '}') {
    const label = LABEL_NAME.exec(line.slice(at))?.[0] ?? fail('no label name')
    at += label.length
    if (line.slice(at, at + 2) !== '="') fail(`no ="… after ${label}`)
    at += 2
    let value = ''
    for (;;) {
      const c = line[at++] ?? fail('a label value left open')
      if (c === '"') break
      if (c !== '\\') {
        value += c
        continue
      }
      const e = line[at++]
      if (e === '\\') value += '\\'
      else if (e === '"') value += '"'
      else if (e === 'n') value += '\n'
      else fail(`an unknown escape \\${e}`)
    }
    if (labels.has(label)) fail(`label ${label} twice`)
    labels.set(label, value)
    if (line[at] === ',') at++
    else if (line[at] !== '}') fail(`no , or } after label ${label}`)
  }
  return { labels, at: at + 1 }
}

/** ` value [timestamp]` and nothing else */
function isValueAndTimestamp(text: string): boolean {
  const fields = text.split(' ')
  return (
    fields[0] === '' &&
    fields.length >= 2 &&
    fields.length <= 3 &&
    fields.slice(1).every((f) => NUMBER.test(f))
  )
}

/**
 * The samples of an exposition, read to the letter of the formats: a label value ends at the first unescaped
 * quote and knows three escapes (`\\`, `\"`, `\n`), every line is a comment of a known kind or one sample with
 * nothing after its value but a timestamp (and, in OpenMetrics, an exemplar). Throws at the first line that is
 * not so.
 */
function readStrictly(body: string, openMetrics: boolean): StrictSample[] {
  if (!body.endsWith('\n')) throw new Error('the body does not end with a newline')
  const lines = body.slice(0, -1).split('\n')
  if (openMetrics && lines.pop() !== '# EOF') throw new Error('OpenMetrics without its # EOF line last')
  const samples: StrictSample[] = []
  for (const [i, line] of lines.entries()) {
    try {
      // the text format ignores empty lines; OpenMetrics has none
      if (line === '' && !openMetrics) continue
      if (line.startsWith('#')) {
        if (!/^# (?:HELP|TYPE|UNIT) [a-zA-Z_:][a-zA-Z0-9_:]*(?: .*)?$/.test(line))
          throw new Error('an unknown comment')
        continue
      }
      const name = METRIC_NAME.exec(line)?.[0]
      if (!name) throw new Error('no metric name')
      const { labels, at } = readLabelSet(line, name.length)
      let rest = line.slice(at)
      const exemplarAt = openMetrics ? rest.indexOf(' # ') : -1
      if (exemplarAt !== -1) {
        const exemplar = readLabelSet(rest, exemplarAt + 3)
        if (exemplar.at === exemplarAt + 3) throw new Error('an exemplar without labels')
        if (!isValueAndTimestamp(rest.slice(exemplar.at))) throw new Error('an exemplar without its value')
        rest = rest.slice(0, exemplarAt)
      }
      if (!isValueAndTimestamp(rest)) throw new Error('not " value [timestamp]" after the labels')
      samples.push({ name, labels, value: Number(rest.split(' ')[1]) })
    } catch (err) {
      throw new Error(`line ${i + 1}: ${(err as Error).message}: ${shown(line)}`)
    }
  }
  return samples
}

// --- the traffic ------------------------------------------------------------------------------------------

/** one request: how it was sent, and the name and source it must be reported under (undefined: not derivable
 * from the input alone, as a user agent's product: then the outputs must agree with each other) */
interface Sent {
  id: string
  what: string
  name: string | undefined
  /** undefined for a user agent: `useragent`, or `anonymous` for one that is blank (a no-break space) */
  source: string | undefined
  /** the request (over mTLS) whose name this one (the same certificate in an XFCC) must have */
  sameAs?: string
}

interface AuditLine {
  request_id: string
  identity: string
  source: string
  status: number
  kind: string
  verified: boolean
  cert_subject?: string
}

/**
 * the name a verified credential's text becomes: `anonymous` and `ua:…` are kept apart from unverified names,
 * and `__overflow__` from the metrics' overflow entry, by the source's prefix; over 512 units it is cut and
 * ends with its digest
 */
function verifiedName(name: string, source: string): string {
  const named =
    name === 'anonymous' || name === '__overflow__' || name.startsWith('ua:') ? `${source}:${name}` : name
  if (named.length <= 512) return named
  const digest = createHash('sha256').update(named, 'utf16le').digest('hex').slice(0, 16)
  return `${cutBetweenCharacters(named, 494)}…#${digest}`
}

/** the SPIFFE ID's allowed characters only, never a dot segment */
const spiffeSegment = fc
  .string({ unit: fc.constantFrom(...'abcXYZ019._-'), minLength: 1, maxLength: 40 })
  .map((s) => (s === '.' || s === '..' ? `${s}x` : s))

/** the subject in openssl's -subj syntax: every character of the CN escaped that the syntax would read */
function subjectOf(cn: string): string {
  return `/O=names/CN=${cn.replace(/[\\/+=]/g, '\\$&')}`
}

/** the subject as Envoy prints it in an XFCC's Subject (X509_NAME_print_ex with XN_FLAG_RFC2253) */
async function rfc2253Subject(certFile: string): Promise<string> {
  const { stdout } = await run('openssl', [
    'x509',
    '-in',
    certFile,
    '-noout',
    '-subject',
    '-nameopt',
    'RFC2253',
  ])
  return stdout.replace(/\n$/, '').replace(/^subject=/, '')
}

t.test(
  'a name the client chooses is the same identity in every output, and breaks none',
  {
    skip: skipWithout('prometheus', prometheusBin) || skipWithout('promtool', promtool),
    timeout: 120_000,
  },
  async (t) => {
    const draw = <T>(arbitrary: fc.Arbitrary<T>, n: number, salt: number): T[] =>
      fc.sample(arbitrary, { numRuns: n, seed: SEED + salt })
    const claims = draw(hostileText, 150, 1)
    const tenants = draw(hostileText, 80, 2).map(asHeaderValue)
    const userAgents = draw(hostileText, 20, 3).map(asHeaderValue)
    // `check` refuses these two as api key names
    const keyNames = [...new Set(draw(hostileText, 12, 4).map((s) => asUtf8Text(s, 200)))].filter(
      (n) => n !== 'anonymous' && !n.startsWith('ua:'),
    )
    const commonNames = [...new Set(draw(shortText, 8, 5).map((s) => asUtf8Text(s, 20)))]
    const spiffeIds = draw(fc.tuple(spiffeSegment, spiffeSegment), 4, 6).map(([ns, sa]) => [ns, sa] as const)

    const { upstream, key, jwks } = await startUpstreamAndJwks(t)
    const { ca: serverCa, server } = await createServerPki()
    const clientCa = await createCA('client-ca-names')
    const certs = await Promise.all([
      ...commonNames.map(async (cn) => ({
        cn,
        spiffe: undefined as readonly [string, string] | undefined,
        leaf: await issueCert(clientCa, { subject: subjectOf(cn) }),
      })),
      ...spiffeIds.map(async (spiffe, i) => ({
        cn: `w${i}`,
        spiffe,
        leaf: await issueCert(clientCa, {
          cn: `w${i}`,
          uriSans: [`spiffe://cluster.local/ns/${spiffe[0]}/sa/${spiffe[1]}`],
        }),
      })),
    ])
    const apiKeys = keyNames.map((name, i) => ({ name, secret: `names-test-key-${SEED}-${i}` }))

    // started first: Prometheus takes up its targets only after its discovery interval
    const admin = `127.0.0.1:${await freePort()}`
    // the text format, as the sidecar wrote it for a scraper that asked for it: Prometheus 2.42 always asks for
    // OpenMetrics, so it reads the text body from here
    let textBody: string | undefined
    const replay = createServer((_req, res) => {
      if (textBody === undefined) res.writeHead(503).end()
      else res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(textBody)
    })
    replay.listen(0, '127.0.0.1')
    await once(replay, 'listening')
    t.teardown(() => new Promise<void>((resolve) => replay.close(() => resolve())))
    const replayAt = `127.0.0.1:${(replay.address() as AddressInfo).port}`
    const prometheus = startPrometheus(t, prometheusBin!, () =>
      [
        'global: { scrape_interval: 1s }',
        'scrape_configs:',
        '  - job_name: openmetrics',
        `    static_configs: [{ targets: ["${admin}"] }]`,
        '  - job_name: text',
        `    static_configs: [{ targets: ["${replayAt}"] }]`,
        '',
      ].join('\n'),
    )
    prometheus.catch(() => {})

    const sidecar = await startTestSidecar(t, {
      service: 'names',
      admin,
      listen: mtlsListen(server, clientCa),
      upstream: upstream.url,
      audit: { output: 'stdout', ringSize: 5_000 },
      forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc' },
      jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: [AUDIENCE] }] },
      apiKeys: {
        header: 'x-api-key',
        keys: apiKeys.map((k) => ({
          name: k.name,
          kind: 'service',
          sha256: createHash('sha256').update(k.secret).digest('hex'),
        })),
      },
      identities: [
        { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
        { name: 'subject/{subject}', kind: 'service', match: { cert: { subject: '{subject}' } } },
        {
          name: '{who}',
          kind: 'service',
          match: { jwt: { issuer: ISSUER, claims: { preferred_username: '{who}' } } },
        },
        { name: 'tenant/{t}', kind: 'service', match: { header: { 'x-tenant': '{t}' } } },
      ],
    })

    // the live stream, subscribed before the traffic: one event per request
    const live = new AbortController()
    t.teardown(() => live.abort())
    const stream = await request(`${sidecar.adminUrl}/events`, { signal: live.signal })
    let liveText = ''
    stream.body.setEncoding('utf8')
    stream.body.on('data', (c: string) => {
      liveText += c
    })
    stream.body.on('error', () => {})
    await eventually(() => liveText.includes(': connected'), { what: 'the live stream open' })

    const sent: Sent[] = []
    let n = 0
    const nextId = (what: string) => `names-${SEED}-${what}-${n++}`
    const agent = new Agent({ connections: 4 })
    t.teardown(() => agent.close())

    for (const who of claims) {
      const id = nextId('jwt')
      const token = await mintToken(key, { preferred_username: who }, { issuer: ISSUER, audience: AUDIENCE })
      const res = await request(`${sidecar.proxyUrl}/echo`, {
        headers: { authorization: `Bearer ${token}`, 'x-request-id': id },
        dispatcher: agent,
      })
      await res.body.dump()
      sent.push({ id, what: `claim ${shown(who)}`, name: verifiedName(who, 'jwt'), source: 'jwt' })
    }
    for (const { name, secret } of apiKeys) {
      const id = nextId('apikey')
      const res = await request(`${sidecar.proxyUrl}/echo`, {
        headers: { 'x-api-key': secret, 'x-request-id': id },
        dispatcher: agent,
      })
      await res.body.dump()
      sent.push({ id, what: `api key ${shown(name)}`, name: verifiedName(name, 'apikey'), source: 'apikey' })
    }
    const rawRequest = (id: string, name: string, value: string) =>
      Buffer.from(
        `GET /echo HTTP/1.1\r\nhost: names.test\r\nx-request-id: ${id}\r\n${name}: ${value}\r\nconnection: close\r\n\r\n`,
        'latin1',
      )
    for (const tenant of tenants) {
      const id = nextId('tenant')
      await rawExchange(sidecar.proxyAddress.port, rawRequest(id, 'x-tenant', tenant))
      sent.push({
        id,
        what: `x-tenant ${shown(tenant)}`,
        name: cutBetweenCharacters(`ua:tenant/${asUtf8Read(tenant)}`, 256),
        source: 'anonymous',
      })
    }
    for (const ua of userAgents) {
      const id = nextId('ua')
      await rawExchange(sidecar.proxyAddress.port, rawRequest(id, 'user-agent', ua))
      sent.push({ id, what: `user-agent ${shown(ua)}`, name: undefined, source: undefined })
    }
    const fromEnvoy = new Agent({ localAddress: '127.0.0.2' })
    t.teardown(() => fromEnvoy.close())
    for (const { cn, spiffe, leaf } of certs) {
      // a `{subject}` pattern captures the subject as the audit line's cert_subject shows it (DER order,
      // RFC 4514 escapes): the XFCC of the same certificate must name it as mTLS does
      const name = spiffe ? `${spiffe[0]}/${spiffe[1]}` : undefined
      // over mTLS: mtlsEcho sends no request id of its own, so the one the proxy made is read from the echo
      const overMtls = await mtlsEcho(sidecar.httpsAddress!.port, serverCa.certPem, leaf)
      t.equal(overMtls.status, 200, `CN ${shown(cn)} over mTLS`)
      const mtlsId = (JSON.parse(overMtls.body) as { headers: Record<string, string> }).headers[
        'x-request-id'
      ]!
      sent.push({ id: mtlsId, what: `certificate CN ${shown(cn)}`, name, source: 'mtls' })
      const sha256 = new X509Certificate(leaf.certPem).fingerprint256.replace(/:/g, '').toLowerCase()
      const xfccId = nextId('xfcc')
      const uri = spiffe ? `;URI=spiffe://cluster.local/ns/${spiffe[0]}/sa/${spiffe[1]}` : ''
      const res = await request(`${sidecar.proxyUrl}/echo`, {
        dispatcher: fromEnvoy,
        headers: {
          'x-request-id': xfccId,
          'x-forwarded-client-cert': `By=spiffe://cluster.local/ns/edge/sa/gw;Hash=${sha256};Subject="${await rfc2253Subject(leaf.certFile)}"${uri}`,
        },
      })
      await res.body.dump()
      sent.push({
        id: xfccId,
        what: `XFCC of CN ${shown(cn)}`,
        name,
        source: 'xfcc',
        sameAs: mtlsId,
      })
    }
    t.comment(`${sent.length} requests, seed ${SEED}`)

    // --- the audit line: JSON, one per request ---
    const auditById = await eventually(
      () => {
        const lines = sidecar.process
          .stdout()
          .split('\n')
          .filter((l) => l !== '')
        if (lines.length < sent.length) return undefined
        return new Map(
          lines.map((l) => {
            const record = JSON.parse(l) as AuditLine
            return [record.request_id, record] as const
          }),
        )
      },
      { what: 'an audit line for every request', timeoutMs: 20_000 },
    )
    t.equal(auditById.size, sent.length, 'one audit line per request, each one JSON document')

    // the name each request is reported under: the expected one, or (a user agent's) the audit line's
    const upstreamById = new Map(upstream.received.map((r) => [String(r.headers['x-request-id']), r.headers]))
    const expected = new Map<string, { name: string; source: string; requests: number }>()
    let disagreements = 0
    const agree = (ok: boolean, message: string, extra: Record<string, unknown>) => {
      if (ok) return true
      const diagnostic = Object.fromEntries(Object.entries(extra).map(([k, v]) => [k, shown(v, 4000)]))
      if (++disagreements <= 20) t.fail(message, diagnostic)
      return false
    }

    for (const s of sent) {
      const audit = auditById.get(s.id)
      const certName = (id: string) => {
        const subject = auditById.get(id)?.cert_subject
        return subject === undefined ? undefined : `subject/${subject}`
      }
      const name =
        s.name ??
        (s.sameAs !== undefined
          ? certName(s.sameAs)
          : s.source === 'mtls'
            ? certName(s.id)
            : audit?.identity) ??
        ''
      const source = s.source ?? (audit?.source === 'anonymous' ? 'anonymous' : 'useragent')
      agree(audit?.identity === name && audit.source === source, `${s.what}: the audit line's identity`, {
        got: audit && [audit.identity, audit.source, audit.status],
        want: [name, source],
      })
      const headers = upstreamById.get(s.id)
      const header = headers?.['x-nhi-identity']
      let decoded: string | undefined
      try {
        decoded = typeof header === 'string' ? decodeURIComponent(header) : undefined
      } catch {
        decoded = undefined
      }
      agree(
        typeof header === 'string' && /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(header),
        `${s.what}: x-nhi-identity is printable ASCII, without a space at either end`,
        { header },
      )
      agree(
        decoded === labelOf(name) && headers?.['x-nhi-source'] === source,
        `${s.what}: x-nhi-identity decodes to the name`,
        { got: [decoded, headers?.['x-nhi-source'], audit?.status], want: [labelOf(name), source] },
      )
      const nhiHeaders = Object.keys(headers ?? {})
        .filter((h) => h.startsWith('x-nhi-'))
        .sort()
      agree(
        nhiHeaders.join() === 'x-nhi-identity,x-nhi-kind,x-nhi-source,x-nhi-verified',
        `${s.what}: the four x-nhi-* headers, no other`,
        { got: nhiHeaders },
      )
      agree(
        headers?.['x-nhi-kind'] === audit?.kind && headers?.['x-nhi-verified'] === String(audit?.verified),
        `${s.what}: x-nhi-kind and x-nhi-verified are the audit line's`,
        { got: [headers?.['x-nhi-kind'], headers?.['x-nhi-verified']], want: [audit?.kind, audit?.verified] },
      )
      const k = JSON.stringify([source, name])
      const entry = expected.get(k) ?? { name, source, requests: 0 }
      entry.requests++
      expected.set(k, entry)
    }
    const wantedSeries = [...expected.values()]
      .map((e) => [labelOf(e.name), e.source, e.requests] as const)
      .sort(compareTuples)

    // --- /metrics, both formats: read strictly, checked by promtool ---
    const bodies: Record<string, string> = {}
    for (const [format, accept] of [
      ['text', 'text/plain'],
      ['OpenMetrics', 'application/openmetrics-text; version=1.0.0'],
    ] as const) {
      const body = await (await fetch(`${sidecar.adminUrl}/metrics`, { headers: { accept } })).text()
      bodies[format] = body
      let samples: StrictSample[] = []
      try {
        samples = readStrictly(body, format === 'OpenMetrics')
        t.pass(`${format}: every line reads strictly`)
      } catch (err) {
        t.fail(`${format}: every line reads strictly`, { error: (err as Error).message })
      }
      const seriesKeys = samples.map((s) => JSON.stringify([s.name, ...[...s.labels].sort()]))
      t.equal(new Set(seriesKeys).size, seriesKeys.length, `${format}: no two samples are one series`)
      const requests = samples.filter((s) => s.name === 'nhi_requests_total')
      const labelNames = new Set(requests.map((s) => [...s.labels.keys()].sort().join(',')))
      t.same(
        [...labelNames],
        ['code,identity,kind,method,route,service,source,verified'],
        `${format}: nhi_requests_total has its eight labels, no more`,
      )
      const found = new Map<string, number>()
      for (const s of requests) {
        const k = JSON.stringify([s.labels.get('identity'), s.labels.get('source')])
        found.set(k, (found.get(k) ?? 0) + s.value)
      }
      sameRows(
        t,
        [...found.entries()].map(([k, n]) => [...(JSON.parse(k) as string[]), n] as const),
        wantedSeries,
        `${format}: nhi_requests_total counts each identity's requests under its name`,
      )
      const lastSeen = samples.filter((s) => s.name === 'nhi_identity_last_seen_timestamp_seconds')
      t.equal(lastSeen.length, expected.size, `${format}: one last-seen series per identity`)
      if (format === 'text') {
        const check = await run(promtool!, ['check', 'metrics'], { input: body })
        t.equal(
          check.code,
          0,
          `promtool check metrics accepts the ${format} body: ${check.stdout}${check.stderr}`,
        )
      }
    }
    textBody = bodies['text']

    // --- the live view: its event stream (each event one `data:` line of JSON) and its JSON documents ---
    const liveEvents = await eventually(
      () => {
        // an event ends at an empty line; a line ends at CR, LF or CRLF (the event-stream format)
        const events = liveText
          .split(/\r\n\r\n|\r\r|\n\n/)
          .map((block) =>
            block
              .split(/\r\n|\r|\n/)
              .filter((l) => !l.startsWith(':') && !l.startsWith('retry:') && l !== ''),
          )
          .filter((lines) => lines.length > 0)
        return events.length >= sent.length ? events : undefined
      },
      { what: 'a live event for every request', timeoutMs: 20_000 },
    )
    t.equal(liveEvents.length, sent.length, 'one live event per request')
    for (const lines of liveEvents) {
      let event: { id?: string; identity?: string; source?: string } = {}
      try {
        if (lines.length !== 1 || !lines[0]!.startsWith('data: ')) throw new Error('not one data line')
        event = JSON.parse(lines[0]!.slice('data: '.length)) as typeof event
      } catch {
        agree(false, 'a live event is one data line of JSON', { lines: lines.map((l) => l.slice(0, 200)) })
        continue
      }
      const line = auditById.get(event.id ?? '')
      agree(
        event.identity === line?.identity && event.source === line?.source,
        `live event ${event.id}: the audit line's identity`,
        { got: [event.identity, event.source], want: line && [line.identity, line.source] },
      )
    }

    const view = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as {
      identities: { name: string; source: string; requests: number }[]
    }
    sameRows(
      t,
      view.identities.map((r) => [labelOf(r.name), r.source, r.requests] as const),
      wantedSeries,
      '/identities: one row per identity, under its name',
    )
    const ring = (await (await fetch(`${sidecar.adminUrl}/audit?limit=5000`)).json()) as {
      events: { request_id: string; identity: string; source: string }[]
    }
    t.equal(ring.events.length, sent.length, '/audit has every request')
    for (const e of ring.events) {
      const line = auditById.get(e.request_id)
      agree(
        e.identity === line?.identity && e.source === line?.source,
        `/audit ${e.request_id}: the audit line's identity`,
        { got: [e.identity, e.source], want: line && [line.identity, line.source] },
      )
    }

    // --- a real Prometheus, scraping both formats, and inventory reading it ---
    const { base } = await prometheus
    const query = async (promql: string) => {
      const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(promql)}`)
      const answer = (await res.json()) as {
        data: { result: { metric: Record<string, string>; value: [number, string] }[] }
      }
      return answer.data.result
    }
    for (const job of ['openmetrics', 'text']) {
      const scraped = await eventually(
        async () => {
          const result = await query(`sum by (identity, source) (nhi_requests_total{job="${job}"})`)
          const total = result.reduce((sum, r) => sum + Number(r.value[1]), 0)
          return total >= sent.length ? result : undefined
        },
        { what: `Prometheus scraped every request (${job})`, timeoutMs: 30_000, intervalMs: 250 },
      ).catch(async () => query(`sum by (identity, source) (nhi_requests_total{job="${job}"})`))
      sameRows(
        t,
        scraped.map(
          (r) => [r.metric['identity'] ?? '', r.metric['source'] ?? '', Number(r.value[1])] as const,
        ),
        wantedSeries,
        `Prometheus (${job}): each identity's label value as the name, with its requests`,
      )
    }
    const targets = (await (await fetch(`${base}/api/v1/targets`)).json()) as {
      data: { activeTargets: { labels: { job: string }; health: string; lastError: string }[] }
    }
    for (const target of targets.data.activeTargets)
      t.same([target.health, target.lastError], ['up', ''], `the ${target.labels.job} target scrapes cleanly`)

    const inventory = await runCli(['inventory', '--prometheus', base, '--json'], { timeoutMs: 30_000 })
    t.equal(inventory.code, 0, `inventory: ${inventory.stderr}`)
    // inventory lists each name once, whatever its sources; a user agent's names (`anonymous`, `ua:curl`)
    // are the proxy's own, not drawn here
    const rows = (JSON.parse(inventory.stdout) as { identities: { identity: string }[] }).identities
    const ownNames = new Set(
      sent.filter((s) => s.source === undefined).map((s) => auditById.get(s.id)?.identity),
    )
    sameRows(
      t,
      rows.filter((r) => !ownNames.has(r.identity)).map((r) => [r.identity]),
      [...new Set(wantedSeries.map(([name]) => name).filter((name) => !ownNames.has(name)))].map((name) => [
        name,
      ]),
      'inventory lists every identity under its name',
    )
    t.equal(disagreements, 0, `no output disagrees (seed ${SEED})`)
  },
)

/** that two lists of series hold the same rows, reported as the rows one has and the other lacks */
function sameRows(
  t: Test,
  got: readonly (readonly (string | number)[])[],
  want: readonly (readonly (string | number)[])[],
  message: string,
): void {
  const key = (row: readonly (string | number)[]) => JSON.stringify(row)
  const count = (rows: readonly (readonly (string | number)[])[]) => {
    const counts = new Map<string, number>()
    for (const row of rows) counts.set(key(row), (counts.get(key(row)) ?? 0) + 1)
    return counts
  }
  const [g, w] = [count(got), count(want)]
  const short = (k: string) => shown(JSON.parse(k))
  const missing = [...w].filter(([k, n]) => (g.get(k) ?? 0) < n).map(([k]) => short(k))
  const extra = [...g].filter(([k, n]) => (w.get(k) ?? 0) < n).map(([k]) => short(k))
  t.ok(missing.length === 0 && extra.length === 0, message, {
    rows: got.length,
    wanted: want.length,
    missing: missing.slice(0, 8),
    extra: extra.slice(0, 8),
  })
}

function compareTuples(a: readonly (string | number)[], b: readonly (string | number)[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = String(a[i])
    const y = String(b[i])
    if (x !== y) return x < y ? -1 : 1
  }
  return 0
}
