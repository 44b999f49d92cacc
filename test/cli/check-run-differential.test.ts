// Generated differential test: `nhi-proxy check` accepts a config exactly when `nhi-proxy run` starts with it,
// and a reload of a running proxy refuses it exactly when `check` does. Each config is a valid full config
// (every top-level section present) with one or two edits from a catalogue (wrong types, out-of-range values,
// unknown and duplicate keys, YAML features, patterns, CIDRs, URLs, files that are missing or unusable,
// settings that exclude each other), optionally saved with CRLF line ends or a byte order mark. Every error
// `check` reports must be at the FILE:LINE:COL of an edited node (computed from the edit), and no output may
// quote a secret the config holds. The cases come from the suite's seed (PROPERTY_SEED; FC_SEED picks
// another set). The built bin runs everything, as an operator runs it.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import t from 'tap'
import { eventually, GiveUp } from '../helpers/eventually.ts'
import { createSigningKey } from '../helpers/jwks.ts'
import { mapLimit } from '../helpers/limit.ts'
import { refusedPort } from '../helpers/net.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { replaceFile, scratchDirSync } from '../helpers/scratch.ts'
import { runCli, spawnCli } from '../helpers/sidecar.ts'

const dir = scratchDirSync('check-run-differential')
/** put in every value that holds a credential: no diagnostic or log line may show it */
const SECRET = 'S3cretW0rd'
const CONFIGS = 120
const RUN_CASES = 30
const RELOAD_CASES = 12

/** A line of a config being edited: edits keep a reference to the lines they mark, so later insertions move them. */
interface Line {
  text: string
}
interface Mark {
  line: Line
  col: number
}
type Doc = Line[]

function lineStarting(doc: Doc, prefix: string): Line {
  const found = doc.filter((l) => l.text.startsWith(prefix))
  if (found.length !== 1) throw new Error(`${found.length} lines start with ${JSON.stringify(prefix)}`)
  return found[0]!
}
const indentOf = (l: Line) => l.text.length - l.text.trimStart().length

/**
 * replaces the value after `prefix` (which ends with ": ") on the line starting with `find` (default `prefix`);
 * the mark is at the value
 */
function setValue(doc: Doc, prefix: string, value: string, find = prefix): Mark {
  const line = lineStarting(doc, find)
  line.text = prefix + value
  return { line, col: prefix.length + 1 }
}

/** puts `text` on a line of its own after the line starting with `prefix`, at that line's indentation */
function insertAfter(doc: Doc, prefix: string, text: string, indent?: number): Mark {
  const at = lineStarting(doc, prefix)
  const pad = indent ?? indentOf(at)
  const line = { text: `${' '.repeat(pad)}${text}` }
  doc.splice(doc.indexOf(at) + 1, 0, line)
  return { line, col: pad + 1 }
}

interface Edit {
  name: string
  /** edits the config; returns where `check` must report an error, should it refuse the config */
  apply(doc: Doc): Mark[]
  /** names something only a start reads (a file, a port, an address): the run and reload cases favour it */
  start?: boolean
}

interface ValueOptions {
  /** the line to edit starts with this (default: the prefix) */
  find?: string
  /** the mark is at this part of the value (an item of a flow list, the scalar after a tag) */
  at?: string
  start?: boolean
}

/** a value edit: `prefix` is the whole start of the line, its indentation and key included */
const value = (name: string, prefix: string, v: string, opts: ValueOptions = {}): Edit => ({
  name,
  apply: (doc) => {
    const mark = setValue(doc, prefix, v, opts.find)
    return [opts.at === undefined ? mark : { line: mark.line, col: mark.col + v.indexOf(opts.at) }]
  },
  ...(opts.start ? { start: true } : {}),
})
/** a line added after `prefix`'s line at its indentation (a key of the same mapping) */
const added = (name: string, prefix: string, text: string): Edit => ({
  name,
  apply: (doc) => [insertAfter(doc, prefix, text)],
})

const f = (name: string) => join(dir, name)

const EDITS: Edit[] = [
  // wrong types
  value('service as a list', 'service: ', '[a, b]'),
  value('listen.http as a number', '  http: ', '8080'),
  value('workers as text', 'workers: ', 'many'),
  value('liveClients as text', '  liveClients: ', 'ten'),
  value('requireJwks as a string', '  requireJwks: ', '"yes"'),
  value('onInvalid as an unknown value', '  onInvalid: ', 'drop'),
  value('audiences as a mapping', '      audiences: ', '{ api: true }', { find: '      audiences: [' }),
  value('policy mode unknown', '  mode: ', 'enforcing'),
  value('issuer maxIdentities as a fraction', '      maxIdentities: ', '2.5'),
  // out of range
  value('listen.http port 65536', '  http: ', '127.0.0.1:65536', { start: true }),
  value('listen.http quoted, without a host', '  http: ', '":0"', { start: true }),
  value('admin port 65536', 'admin: ', '127.0.0.1:65536', { start: true }),
  value('https address without a host', '    address: ', ':0', { start: true }),
  value('timeouts.upstream -1s', '  upstream: ', '-1s'),
  value('timeouts.upstream 0s', '  upstream: ', '0s'),
  value('timeouts.headers 1e309s', '  headers: ', '1e309s'),
  value('timeouts.headers 1e309', '  headers: ', '1e309'),
  value('timeouts.idle 30d', '  idle: ', '30d'),
  value('timeouts.drain as a huge number', '  drain: ', '99999999999'),
  value('refreshInterval 0s', '      refreshInterval: ', '0s'),
  value('unknownKidCooldown 0s', '  unknownKidCooldown: ', '0s'),
  value('clockSkew -5', '  clockSkew: ', '-5'),
  value('otlp.timeout 0s', '  timeout: ', '0s'),
  value('maxHeaderBytes 16k', '  maxHeaderBytes: ', '16k'),
  value('maxHeaderBytes 0', '  maxHeaderBytes: ', '0'),
  value('maxConnections 1e3', '  maxConnections: ', '1e3'),
  value('maxConnections 1.5', '  maxConnections: ', '1.5'),
  value('workers 0', 'workers: ', '0', { start: true }),
  value('workers 65', 'workers: ', '65', { start: true }),
  value('audit.sample 1.5', '  sample: ', '1.5'),
  value('audit.sample -0', '  sample: ', '-0'),
  value('buckets out of order', '  buckets: ', '[1, 0.1]'),
  value('buckets with .inf', '  buckets: ', '[0.1, .inf]', { at: '.inf' }),
  value('buckets with .nan', '  buckets: ', '[.nan]', { at: '.nan' }),
  value('cost.perRequest negative', '  perRequest: ', '-1'),
  value('nonceCacheSize 0', '  nonceCacheSize: ', '0'),
  value('dns server port 0', '      servers: ', '["10.0.0.10:0"]', { at: '"', start: true }),
  value('dns server host name', '      servers: ', '[dns.example]', { at: 'dns', start: true }),
  value('dns server IPv6 with port', '      servers: ', '["[fd00::10]:53"]', { start: true }),
  value('verifyWorkers 17', '  verifyWorkers: ', '17'),
  // unknown keys
  added('unknown top-level key', 'service: ', 'servise: x'),
  added('unknown key in listen.https', '    clientCert: ', 'clientCa: x'),
  added('unknown key in an issuer', '      refreshInterval: ', 'jwks: x'),
  added('unknown key in an identity match', '      spiffe: ', 'spiffeId: x'),
  added('unknown key in a policy allow entry', '          verified: ', 'verfied: true'),
  added('unknown key in bots.verify.dns', '      enabled: false', 'server: [10.0.0.1]'),
  // duplicate keys
  {
    name: 'duplicate top-level key',
    apply: (doc) => {
      const line = { text: 'service: again' }
      doc.splice(doc.indexOf(lineStarting(doc, 'upstream: ')), 0, line)
      return [{ line, col: 1 }]
    },
  },
  {
    name: 'duplicate nested key',
    apply: (doc) => [insertAfter(doc, '  drainDelay: ', 'drainDelay: 1s')],
  },
  // YAML features
  {
    name: 'anchor and alias of a duration',
    apply: (doc) => {
      const upstream = setValue(doc, '  upstream: ', '&wait 30s')
      setValue(doc, '  request: ', '*wait')
      return [upstream]
    },
  },
  {
    name: 'alias of a duration where a count goes',
    apply: (doc) => {
      setValue(doc, '  upstream: ', '&wait 30s')
      return [setValue(doc, '  maxConnections: ', '*wait')]
    },
  },
  {
    name: 'alias of an undefined anchor',
    apply: (doc) => [setValue(doc, '  maxConnections: ', '*nowhere')],
  },
  added('merge key', '  maxConnections: ', '<<: { maxConnections: 5 }'),
  value('binary tag', 'service: ', '!!binary aGVsbG8=', { at: 'aGVs' }),
  value('str tag on a count', '  liveClients: ', '!!str 10', { at: '10' }),
  value('int tag on a count', '  liveClients: ', '!!int "10"', { at: '"' }),
  // refused at the tag: the config gives none a meaning
  value('custom tag', '  liveClients: ', '!count 10'),
  value('timestamp-like service', 'service: ', '2001-12-14'),
  {
    name: 'a second document',
    apply: (doc) => {
      const line = { text: '---' }
      doc.push(line, { text: 'service: second' })
      return [{ line, col: 1 }]
    },
  },
  {
    name: 'flow mapping for limits',
    apply: (doc) => {
      const at = lineStarting(doc, 'limits:')
      const i = doc.indexOf(at)
      let end = i + 1
      while (doc[end]?.text.startsWith(' ')) end++
      doc.splice(i + 1, end - i - 1)
      at.text = 'limits: { maxHeaderBytes: 16384, maxConnections: 0 }'
      return [{ line: at, col: 'limits: { maxHeaderBytes: 16384, maxConnections: '.length + 1 }]
    },
  },
  {
    name: 'flow mapping, valid',
    apply: (doc) => {
      const at = lineStarting(doc, 'anomalies:')
      doc.splice(doc.indexOf(at) + 1, 1)
      at.text = 'anomalies: { tokenSharedPeers: 3 }'
      return [{ line: at, col: 1 }]
    },
  },
  {
    name: 'a tab in the indentation',
    apply: (doc) => {
      const line = lineStarting(doc, '  tokenSharedPeers: ')
      line.text = `\t${line.text.trimStart()}`
      return [{ line, col: 1 }]
    },
  },
  // patterns and templates
  value('identity name with an unbalanced brace', '  - name: ', '"svc-{team"', { find: '  - name: "svc-' }),
  value('identity name with a capture not defined', '  - name: ', '"svc-{squad}"', {
    find: '  - name: "svc-',
  }),
  {
    // the rule's name uses the capture the broken pattern no longer defines: reported there too
    name: 'header pattern with an unbalanced brace',
    apply: (doc) => {
      const header = setValue(doc, '      header: ', '{ x-team: "{team" }')
      const name = lineStarting(doc, '  - name: "svc-')
      return [
        { line: header.line, col: header.col + '{ x-team: '.length },
        { line: name, col: 11 },
      ]
    },
  },
  {
    // the rule's name uses the capture the pattern no longer has: reported there
    name: 'spiffe pattern with a regex',
    apply: (doc) => {
      const spiffe = setValue(doc, '      spiffe: ', 'spiffe://cluster.local/ns/(.*)/sa/{sa}')
      return [spiffe, { line: lineStarting(doc, '  - name: "{ns}'), col: 11 }]
    },
  },
  value('route with regex syntax', '      route: ', '/admin/[a-z]+'),
  value('route with an unbalanced brace', '      route: ', '/admin/{id'),
  value('route without a leading slash', '      route: ', 'admin/**'),
  value('metrics route with a bad parameter', '  routes: ', '["/orders/{id"]', { at: '"' }),
  value('policy allow identity with a brace', '        - identity: ', '"svc-{"'),
  {
    name: 'two policy rules on one route',
    apply: (doc) => {
      const at = lineStarting(doc, '          verified: ')
      const i = doc.indexOf(at)
      const lines = ['    - name: admin-again', '      route: /admin/**', '      allow: [{ identity: "x" }]']
      doc.splice(i + 1, 0, ...lines.map((text) => ({ text })))
      return [{ line: doc[i + 1]!, col: 5 }]
    },
  },
  {
    name: 'two policy rules of one name',
    apply: (doc) => {
      const at = lineStarting(doc, '          verified: ')
      const i = doc.indexOf(at)
      const lines = ['    - name: admin', '      route: /other', '      allow: []']
      doc.splice(i + 1, 0, ...lines.map((text) => ({ text })))
      return [{ line: doc[i + 1]!, col: '    - name: '.length + 1 }]
    },
  },
  // CIDRs
  value('remoteAddr /33', '      remoteAddr: ', '[10.0.0.0/33]', { at: '10' }),
  value('remoteAddr IPv6 /129', '      remoteAddr: ', '["fd00::/129"]', { at: '"' }),
  value('remoteAddr IPv6, valid', '      remoteAddr: ', '["fd00::/8", "::1"]'),
  value('remoteAddr a host name', '      remoteAddr: ', '[proxy.internal]', { at: 'proxy' }),
  value('trustedProxies /33', '  trustedProxies: ', '[127.0.0.2/33]', { at: '127' }),
  value('trustedProxies IPv6 /64', '  trustedProxies: ', '["fd00::/64"]'),
  // URLs (some with a credential)
  value('upstream not a URL', 'upstream: ', 'not a url', { start: true }),
  value('upstream ftp', 'upstream: ', 'ftp://127.0.0.1:21', { start: true }),
  value('upstream with a password', 'upstream: ', `http://user:${SECRET}@127.0.0.1:9`, { start: true }),
  value('upstream port 65536', 'upstream: ', 'http://127.0.0.1:65536', { start: true }),
  {
    name: 'jwksFile replaced by a jwksUri with credentials and a fragment',
    start: true,
    apply: (doc) => {
      const line = lineStarting(doc, '      jwksFile: ')
      line.text = `      jwksUri: https://user:${SECRET}@idp.example/jwks#keys`
      return [{ line, col: '      jwksUri: '.length + 1 }]
    },
  },
  {
    name: 'otlp endpoint with a password and a fragment',
    start: true,
    apply: (doc) => {
      const m = insertAfter(doc, '  logs: ', `endpoint: http://user:${SECRET}@127.0.0.1:9/#x`)
      return [{ line: m.line, col: m.col + 'endpoint: '.length }]
    },
  },
  // files
  value('https cert missing', '    cert: ', f('missing.crt'), { start: true }),
  value('https key missing', '    key: ', f('missing.key'), { start: true }),
  value('https key of another certificate', '    key: ', f('client.key'), { start: true }),
  value('https cert a directory', '    cert: ', f('a-directory'), { start: true }),
  value('clientCA not PEM', '    clientCA: ', f('not-pem.txt'), { start: true }),
  value('upstreamTls ca missing', '  ca: ', f('missing-ca.crt'), { start: true }),
  value('upstreamTls key not PEM', '  key: ', f('not-pem.txt'), { start: true }),
  value('jwksFile missing', '      jwksFile: ', f('missing.json'), { start: true }),
  value('jwksFile not JSON', '      jwksFile: ', f('not-pem.txt'), { start: true }),
  value('jwksFile empty', '      jwksFile: ', f('empty'), { start: true }),
  value('secretFile missing', '      secretFile: ', f('missing.secret'), { start: true }),
  value('secretFile empty', '      secretFile: ', f('empty'), { start: true }),
  value('fingerprintKeyFile missing', '  fingerprintKeyFile: ', f('missing.key'), { start: true }),
  value('fingerprintKeyFile too short', '  fingerprintKeyFile: ', f('short.key'), { start: true }),
  value('fingerprintKeyFile a directory', '  fingerprintKeyFile: ', f('a-directory'), { start: true }),
  value('audit output a directory', '  output: ', f('a-directory'), { start: true }),
  value('audit output through a file', '  output: ', `${f('empty')}/audit.log`, { start: true }),
  value('audit output in a new directory', '  output: ', f('new/audit.log'), { start: true }),
  value('admin tokenFile missing', '  tokenFile: ', f('missing.token'), { start: true }),
  value('admin tokenFile empty', '  tokenFile: ', f('empty'), { start: true }),
  // settings that exclude or need each other
  {
    name: 'upstreamTls cert without key',
    start: true,
    apply: (doc) => {
      const key = lineStarting(doc, '  key: ')
      doc.splice(doc.indexOf(key), 1)
      return [{ line: lineStarting(doc, '  cert: '), col: 3 }]
    },
  },
  {
    name: 'clientCert required without clientCA',
    start: true,
    apply: (doc) => {
      doc.splice(doc.indexOf(lineStarting(doc, '    clientCA: ')), 1)
      const line = lineStarting(doc, '    clientCert: ')
      return [{ line, col: '    clientCert: '.length + 1 }]
    },
  },
  {
    ...added('jwksUri beside jwksFile', '      jwksFile: ', 'jwksUri: https://idp.example/jwks'),
    start: true,
  },
  value('HS256 on a key-set issuer', '      algorithms: ', '[RS256, HS256]'),
  {
    name: 'forwarded format missing',
    apply: (doc) => {
      doc.splice(doc.indexOf(lineStarting(doc, '  format: ')), 1)
      return [{ line: lineStarting(doc, '  trustedProxies: '), col: '  trustedProxies: ['.length + 1 }]
    },
  },
  // empty lists
  value('audiences empty', '      audiences: ', '[]', { find: '      audiences: [' }),
  {
    name: 'policy allow empty',
    apply: (doc) => {
      const at = lineStarting(doc, '      allow:')
      doc.splice(doc.indexOf(at) + 1, 2)
      at.text = '      allow: []'
      return [{ line: at, col: '      allow: '.length + 1 }]
    },
  },
  {
    name: 'identities empty',
    apply: (doc) => {
      const at = lineStarting(doc, 'identities:')
      const i = doc.indexOf(at)
      doc.splice(i + 1, doc.indexOf(lineStarting(doc, 'metrics:')) - i - 1)
      at.text = 'identities: []'
      return [{ line: at, col: 'identities: '.length + 1 }]
    },
  },
  value('trustedProxies empty', '  trustedProxies: ', '[]'),
  value('buckets empty', '  buckets: ', '[]'),
  {
    name: 'api keys empty',
    apply: (doc) => {
      const at = lineStarting(doc, '  keys:')
      doc.splice(doc.indexOf(at) + 1, 3)
      at.text = '  keys: []'
      return [{ line: at, col: '  keys: '.length + 1 }]
    },
  },
]

function baseConfig(upstreamPort: number): string {
  return `service: differential
listen:
  http: 127.0.0.1:0
  https:
    address: 127.0.0.1:0
    cert: ${f('server.crt')}
    key: ${f('server.key')}
    clientCA: ${f('ca.crt')}
    clientCert: required
upstream: http://127.0.0.1:${upstreamPort}
upstreamTls:
  ca: ${f('ca.crt')}
  cert: ${f('client.crt')}
  key: ${f('client.key')}
admin: 127.0.0.1:0
workers: 1
adminAccess:
  tokenFile: ${f('admin.token')}
  allowedHosts: [proxy.internal]
  liveClients: 10
readiness:
  requireJwks: false
  requireUpstream: false
timeouts:
  upstream: 30s
  headers: 10s
  request: 1m
  idle: 65s
  drainDelay: 0s
  drain: 1s
limits:
  maxHeaderBytes: 16384
  maxConnections: 1000
forwardedClientCert:
  format: xfcc
  trustedProxies: [127.0.0.2/32]
  toUpstream: sanitize_set
jwt:
  clockSkew: 30s
  unknownKidCooldown: 30s
  verifyWorkers: 0
  onInvalid: attribute
  issuers:
    - issuer: https://idp.example
      jwksFile: ${f('jwks.json')}
      audiences: [api]
      algorithms: [RS256]
      refreshInterval: 10m
      maxIdentities: 50
    - issuer: hmac-issuer
      secretFile: ${f('hmac.secret')}
      audiences: any
signedAgents:
  authorities: [api.example]
  maxAge: 5m
  nonceCacheSize: 1000
apiKeys:
  header: x-api-key
  fingerprintKeyFile: ${f('fingerprint.key')}
  keys:
    - name: ci
      kind: job
      sha256: ${'ab'.repeat(32)}
identities:
  - name: "svc-{team}"
    kind: service
    match:
      header: { x-team: "{team}" }
  - name: "{ns}/{sa}"
    kind: service
    match:
      spiffe: spiffe://cluster.local/ns/{ns}/sa/{sa}
      remoteAddr: [10.0.0.0/8]
metrics:
  maxIdentities: 100
  routes: [/orders/:id]
  buckets: [0.1, 1]
cost:
  currency: USD
  perRequest: 0.001
audit:
  output: off
  sample: 1
otlp:
  logs: false
  timeout: 5s
anomalies:
  tokenSharedPeers: 3
bots:
  verify:
    enabled: true
    dns:
      enabled: false
      servers: [10.0.0.10]
policy:
  mode: observe
  rules:
    - name: admin
      route: /admin/**
      methods: [GET]
      allow:
        - identity: "svc-*"
          verified: false
`
}

interface Case {
  file: string
  edits: string[]
  /** where each edit puts the node it changed (1-based) */
  marks: { line: number; col: number }[]
  crlf: boolean
  bom: boolean
}

interface Draw {
  /** indexes into EDITS */
  edits: number[]
  crlf: boolean
  bom: boolean
}

// half the edits drawn from those only a start reads, where run and check can disagree
const startEdits = EDITS.flatMap((e, i) => (e.start ? [i] : []))
const caseArb: fc.Arbitrary<Draw> = fc.record({
  edits: fc.uniqueArray(fc.oneof(fc.constantFrom(...startEdits), fc.nat(EDITS.length - 1)), {
    minLength: 1,
    maxLength: 2,
  }),
  crlf: fc.boolean(),
  bom: fc.boolean(),
})

function makeCase(base: string, n: number, draw: Draw): Case | undefined {
  const doc: Doc = base
    .replace(/\n$/, '')
    .split('\n')
    .map((text) => ({ text }))
  const marked: Mark[] = []
  try {
    for (const i of draw.edits) marked.push(...EDITS[i]!.apply(doc))
  } catch {
    // the first edit took away the line the second edits: a pair that does not go together
    return undefined
  }
  // the second edit took away a line the first one marked
  if (marked.some((m) => !doc.includes(m.line))) return undefined
  const eol = draw.crlf ? '\r\n' : '\n'
  const file = f(`case-${n}.yaml`)
  writeFileSync(file, `${draw.bom ? '\uFEFF' : ''}${doc.map((l) => l.text).join(eol)}${eol}`)
  return {
    file,
    edits: draw.edits.map((i) => EDITS[i]!.name),
    marks: marked.map((m) => ({ line: doc.indexOf(m.line) + 1, col: m.col })),
    crlf: draw.crlf,
    bom: draw.bom,
  }
}

interface Checked {
  code: number
  errors: { line: number; col: number; text: string }[]
}

/** one `check` of every file; each file's errors as it printed them */
async function checkAll(files: string[]): Promise<{ byFile: Map<string, Checked>; output: string }> {
  const r = await runCli(['check', ...files], { env: { NHI_PROXY_CONFIG: undefined }, timeoutMs: 30_000 })
  const byFile = new Map<string, Checked>()
  for (const file of files) byFile.set(file, { code: 0, errors: [] })
  for (const line of r.stdout.split('\n')) {
    const summary = /^(.*): (\d+) errors?/.exec(line)
    if (summary && byFile.has(summary[1]!)) byFile.get(summary[1]!)!.code = 1
    const d = /^(.*?):(\d+):(\d+) (.*)$/.exec(line)
    if (d && byFile.has(d[1]!) && !d[4]!.startsWith('warning: '))
      byFile.get(d[1]!)!.errors.push({ line: Number(d[2]), col: Number(d[3]), text: line })
  }
  return { byFile, output: r.stdout + r.stderr }
}

/** `run -c FILE`: whether it starts (its "started" line) or exits, and what it said */
async function tryRun(file: string): Promise<{ started: boolean; stderr: string }> {
  const cli = spawnCli(['run', '-c', file], { NHI_LOG_LEVEL: 'info' })
  try {
    const started = await eventually(
      () => {
        if (/"event":"started"/.test(cli.stderr())) return 'started'
        if (cli.child.exitCode !== null) return 'exited'
        return undefined
      },
      { timeoutMs: 20_000, what: `run -c ${file} to start or exit` },
    )
    return { started: started === 'started', stderr: cli.stderr() }
  } finally {
    cli.kill('SIGKILL')
    await cli.exited
  }
}

/** a proxy started with the base config, then its file replaced by `text`: whether the reload applied */
async function tryReload(
  base: string,
  text: string,
  n: number,
  /** how many errors check reported: a refused reload's lines are awaited until as many have come */
  errors: number,
): Promise<{ applied: boolean; stderr: string; failed: string[] }> {
  const file = f(`reload-${n}.yaml`)
  writeFileSync(file, base)
  const cli = spawnCli(['run', '-c', file], { NHI_LOG_LEVEL: 'info' })
  try {
    await cli.waitForLog((l) => l['event'] === 'started')
    await replaceFile(file, text)
    const outcome = await eventually(
      () => {
        if (cli.child.exitCode !== null) throw new GiveUp(`exited: ${cli.stderr()}`)
        if (/"event":"config_reloaded"/.test(cli.stderr())) return 'applied'
        if (/"event":"config_reload_failed"/.test(cli.stderr())) return 'refused'
        return undefined
      },
      { timeoutMs: 20_000, what: 'the reload to end' },
    )
    // one file change may be reloaded twice (the watcher sees the rename more than once): each line once
    const failed = () => [
      ...new Set(
        cli
          .stderr()
          .split('\n')
          .filter((l) => l.includes('"event":"config_reload_failed"'))
          .map((l) => String((JSON.parse(l) as { msg: string }).msg)),
      ),
    ]
    if (outcome === 'refused')
      // fewer lines than check's errors after this long: compared as they are, and the difference shown
      await eventually(() => failed().length >= errors, { timeoutMs: 5_000 }).catch(() => {})
    return { applied: outcome === 'applied', stderr: cli.stderr(), failed: failed() }
  } finally {
    cli.kill('SIGKILL')
    await cli.exited
  }
}

t.test('check accepts a config exactly when run starts with it and a reload applies it', async (t) => {
  const upstreamPort = await refusedPort()
  const ca = await createCA('differential-ca')
  const [server, client] = await Promise.all([
    issueCert(ca, { cn: 'localhost', dnsSans: ['localhost'], server: true }),
    issueCert(ca, { cn: 'client' }),
  ])
  const key = await createSigningKey('k1')
  writeFileSync(f('ca.crt'), ca.certPem)
  writeFileSync(f('server.crt'), server.certPem)
  writeFileSync(f('server.key'), server.keyPem)
  writeFileSync(f('client.crt'), client.certPem)
  writeFileSync(f('client.key'), client.keyPem)
  writeFileSync(f('jwks.json'), JSON.stringify({ keys: [key.publicJwk] }))
  // the secrets in files hold the marker too: no line may quote them either
  writeFileSync(f('hmac.secret'), `${SECRET}-a-shared-secret-of-32-bytes`)
  writeFileSync(f('fingerprint.key'), `${SECRET}-a-fingerprint-key`)
  writeFileSync(f('admin.token'), `${SECRET}-an-admin-token`)
  writeFileSync(f('short.key'), SECRET)
  writeFileSync(f('not-pem.txt'), 'this is neither PEM nor JSON\n')
  writeFileSync(f('empty'), '')
  mkdirSync(f('a-directory'))
  const base = baseConfig(upstreamPort)
  writeFileSync(f('base.yaml'), base)

  const draws = fc.sample(caseArb, { numRuns: CONFIGS, seed: PROPERTY_SEED })
  const cases = draws.flatMap((d, n) => makeCase(base, n, d) ?? [])
  const { byFile, output } = await checkAll([f('base.yaml'), ...cases.map((c) => c.file)])
  t.equal(byFile.get(f('base.yaml'))!.code, 0, 'the base config passes check', { output })
  t.notMatch(output, SECRET, 'no output of check quotes a secret')

  const describe = (c: Case) => ({ edits: c.edits, crlf: c.crlf, bom: c.bom, file: c.file })
  let refused = 0
  for (const c of cases) {
    const checked = byFile.get(c.file)!
    if (checked.code === 0) continue
    refused++
    t.ok(checked.errors.length > 0, `${c.edits.join(' + ')}: a refusal names a place`, describe(c))
    for (const e of checked.errors) {
      const at = c.marks.some((m) => m.line === e.line && m.col === e.col)
      t.ok(at, `${c.edits.join(' + ')}: the error is at an edited node`, {
        ...describe(c),
        error: e.text,
        expected: c.marks,
      })
    }
  }
  t.ok(refused > 0 && refused < cases.length, `${refused} of ${cases.length} configs refused by check`)

  // the run and reload cases: first those bringing an edit only a start reads that no case taken before
  // brought, then as many accepted by check as refused, where the draw allows
  const isStart = (name: string) => EDITS.find((e) => e.name === name)!.start === true
  const startSide = cases.filter((c) => c.edits.some(isStart))
  const others = cases.filter((c) => !startSide.includes(c))
  const pick = (from: Case[], n: number) => {
    // each case taken brings a start-side edit not taken yet: as many of them as the slots allow
    const covered = new Set<string>()
    const distinct = from.filter((c) => {
      // an edit check refuses on its own would hide what the start makes of the other
      if (byFile.get(c.file)!.code !== 0 && !c.edits.every(isStart)) return false
      const fresh = c.edits.filter((name) => isStart(name) && !covered.has(name))
      for (const name of fresh) covered.add(name)
      return fresh.length > 0
    })
    const first = distinct.slice(0, Math.ceil((n * 2) / 3))
    const rest = others.filter((c) => !first.includes(c))
    const accepted = rest.filter((c) => byFile.get(c.file)!.code === 0)
    const refusedToo = rest.filter((c) => byFile.get(c.file)!.code !== 0)
    const half = Math.ceil((n - first.length) / 2)
    const more = n - first.length - Math.min(half, accepted.length)
    return [...first, ...accepted.slice(0, half), ...refusedToo.slice(0, more)]
  }
  const runCases = pick(startSide, RUN_CASES)
  const runs = await mapLimit(runCases, 4, (c) => tryRun(c.file))
  runCases.forEach((c, i) => {
    t.notMatch(runs[i]!.stderr, SECRET, `${c.edits.join(' + ')}: no line of run quotes a secret`)
    const accepts = byFile.get(c.file)!.code === 0
    t.equal(runs[i]!.started, accepts, `${c.edits.join(' + ')}: run starts exactly when check accepts`, {
      ...describe(c),
      check: byFile.get(c.file)!.errors.map((e) => e.text),
      run: runs[i]!.stderr.split('\n').slice(-4),
    })
  })

  // the reload cases from the other end of the draw, so that they are not the run cases again
  const reloadCases = pick([...startSide].reverse(), RELOAD_CASES)
  const reloads = await mapLimit(reloadCases, 3, (c, i) =>
    tryReload(base, readFileSync(c.file, 'utf8'), i, byFile.get(c.file)!.errors.length),
  )
  reloadCases.forEach((c, i) => {
    const checked = byFile.get(c.file)!
    const r = reloads[i]!
    t.equal(
      r.applied,
      checked.code === 0,
      `${c.edits.join(' + ')}: a reload applies exactly when check accepts`,
      {
        ...describe(c),
        check: checked.errors.map((e) => e.text),
        reload: r.failed,
      },
    )
    // the reload's file is another, so its lines are compared from the position on
    const fromPosition = (line: string) => /:\d+:\d+ .*$/.exec(line)?.[0] ?? `(no position) ${line}`
    if (!r.applied)
      t.same(
        r.failed.map(fromPosition),
        checked.errors.map((e) => fromPosition(e.text)),
        `${c.edits.join(' + ')}: a refused reload logs the errors of check, at their FILE:LINE:COL`,
      )
    t.notMatch(r.stderr, SECRET, 'no log line of a reload quotes a secret')
  })
})
