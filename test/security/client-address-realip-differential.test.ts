// The client address behind trusted proxies, against nginx's realip module on generated cases: for the same
// socket peer, trusted CIDRs and X-Forwarded-For lines, the built sidecar's audit `client_address` must be
// nginx's `$remote_addr` under `set_real_ip_from` (each CIDR), `real_ip_header X-Forwarded-For` and
// `real_ip_recursive on`, apart from DOCUMENTED_DIFFERENCES. Both listen on 127.0.0.1 and [::1]; each case's
// connection comes from a generated loopback source (any of 127.0.0.0/8, or ::1), so the peer is trusted
// or not as the generated CIDRs say. Each side is also held to a model of its own walk (nginxWalk follows
// ngx_http_get_forwarded_addr and ngx_parse_addr_port; sidecarWalk is what docs/reference.md says), so a
// difference is always one of the named ones, and a case that hits one is counted under it.
// From the attacker's side: every request also carries the other headers that name a client (X-Real-IP,
// Forwarded, True-Client-IP, other spellings of X-Forwarded-For), and a peer outside the trusted CIDRs is
// always its own client address, whatever the headers say.
// A share of the requests go over HTTP/2 (h2c with prior knowledge; from ::1, h2 over TLS to the sidecar),
// X-Forwarded-For as several field lines, empty ones among them: nginx reads them line by line as over
// HTTP/1.1, node:http2 joins them with `, ` as Node's HTTP/1.1 server does. A line with whitespace at either
// end, which HTTP/2 forbids (RFC 9113 §8.2.1), is in a share of them: node:http2 drops it, nginx reads it
// (h2Padded). Upper-case names, which HTTP/2 forbids too, are out of the grammar (node:http2 writes the names
// in lower case).
import { once } from 'node:events'
import { connect as h2Connect } from 'node:http2'
import { BlockList, isIPv4, isIPv6, connect as netConnect } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import fc from 'fast-check'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { mapLimit } from '../helpers/limit.ts'
import { freePort } from '../helpers/net.ts'
import { skipWithoutNginx, startNginx } from '../helpers/nginx.ts'
import { createServerPki } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** trusted CIDR sets (one nginx and one sidecar reload each) and cases a set: about 10 s on a loaded machine */
const SETS = 12
const CASES = 40
const CONCURRENCY = 4
/** sidecar: list elements of X-Forwarded-For read from the right, and the longest one read for an address */
const MAX_HOPS = 32
const MAX_ENTRY_LENGTH = 100

// Where the sidecar's client address differs from nginx's on purpose; each is asserted where it shows:
const DOCUMENTED_DIFFERENCES = {
  // HTTP's list separator is the comma alone, with optional whitespace (SP or HTAB) around elements; nginx
  // splits at spaces too and keeps a tab as part of the address, which it then cannot parse
  tab: 'a tab around an element is whitespace to the sidecar, part of the address to nginx',
  spaced: 'two addresses with only a space between are one element the sidecar cannot read, two to nginx',
  // 010.0.0.1 is 10.0.0.1 to nginx but 8.0.0.1 to inet_aton: an ambiguous address stops the walk
  leadingZero: 'an IPv4 part with a leading zero stops the sidecar; nginx reads it as decimal',
  // RFC 7239 and IIS write a bracketed IPv6 address without a port; nginx wants a port after `]`
  bracketed: 'a bracketed IPv6 address without a port is read by the sidecar; nginx stops at it',
  // the sidecar's bounds on what it reads of client-chosen text
  cap: `the sidecar reads at most ${MAX_HOPS} elements (empty ones included); nginx reads on`,
  long: `an element longer than ${MAX_ENTRY_LENGTH} characters (padding included) stops the sidecar`,
  // Node gives the lines as one list joined with ", " (RFC 9110: one field); nginx reads line by line and
  // stops at a line that is empty or starts with an empty element
  lineStart: 'nginx stops at the start of an X-Forwarded-For line that is empty or starts with a comma',
  // an IPv6 CIDR holds the IPv4 addresses of its v4-mapped part (docs: CidrSet, as node:net BlockList);
  // nginx matches an IPv4 address (and a v4-mapped one) against IPv4 CIDRs only
  mappedCidr: 'an IPv6 CIDR trusts the IPv4 addresses of its v4-mapped part for the sidecar, never for nginx',
  // RFC 9113 §8.2.1 makes such a request malformed; nghttp2 drops the field line and serves the rest
  h2Padded: 'over HTTP/2 a line with whitespace at either end is dropped by node:http2 and read by nginx',
} as const
type Difference = keyof typeof DOCUMENTED_DIFFERENCES

// ---- addresses ------------------------------------------------------------------------------------------

/** the same address whatever its spelling: IPv6 as RFC 5952 (and nginx) write it, v4-mapped as its IPv4 address */
function canonical(address: string): string {
  if (isIPv4(address)) return address
  if (!isIPv6(address) || address.includes('%')) return address
  const host = new URL(`http://[${address}]/`).hostname.slice(1, -1)
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host)
  if (!mapped) return host
  const high = Number.parseInt(mapped[1]!, 16)
  const low = Number.parseInt(mapped[2]!, 16)
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`
}

/** ngx_inet_addr: decimal parts (leading zeros and empty parts allowed), 255.255.255.255 is INADDR_NONE */
function ngxInetAddr(text: string): string | undefined {
  const parts = text.split('.')
  if (parts.length !== 4 || parts.some((p) => !/^\d*$/.test(p))) return undefined
  const numbers = parts.map((p) => (p === '' ? 0 : Number(p)))
  if (numbers.some((n) => n > 255) || numbers.every((n) => n === 255)) return undefined
  return numbers.join('.')
}

/** ngx_parse_addr: IPv4 as above, else IPv6 (no zone); as its canonical text */
function ngxParseAddr(text: string): string | undefined {
  const v4 = ngxInetAddr(text)
  if (v4 !== undefined) return v4
  return isIPv6(text) && !text.includes('%') ? canonical(text) : undefined
}

/** ngx_parse_addr_port: an address, `a.b.c.d:port` or `[v6]:port`, port 1-65535 */
function ngxParseAddrPort(text: string): string | undefined {
  const plain = ngxParseAddr(text)
  if (plain !== undefined) return plain
  let address: string
  let port: string
  if (text.startsWith('[')) {
    const close = text.indexOf(']')
    if (close === -1 || close === text.length - 1 || text[close + 1] !== ':') return undefined
    address = text.slice(1, close)
    port = text.slice(close + 2)
  } else {
    const colon = text.indexOf(':')
    if (colon === -1) return undefined
    address = text.slice(0, colon)
    port = text.slice(colon + 1)
  }
  if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) return undefined
  return ngxParseAddr(address)
}

/** the sidecar's reading of one element (docs: an address, `a.b.c.d:port` or `[v6]` with an optional port) */
function sidecarParse(element: string): string | undefined {
  if (isIPv4(element) || (isIPv6(element) && !element.includes('%'))) return canonical(element)
  const m =
    /^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?$/.exec(element) ??
    /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(element)
  if (!m || !isIP(m[1]!)) return undefined
  if (m[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535)) return undefined
  return canonical(m[1]!)
}
const isIP = (a: string) => isIPv4(a) || isIPv6(a)

interface Trust {
  /** the sidecar's: node:net BlockList over every CIDR */
  sidecar(address: string): boolean
  /** nginx's ngx_cidr_match: IPv4 (and v4-mapped) addresses against IPv4 CIDRs, IPv6 against IPv6 */
  nginx(address: string): boolean
}

function trustOf(cidrs: readonly string[]): Trust {
  const all = new BlockList()
  const v4 = new BlockList()
  const v6 = new BlockList()
  for (const c of cidrs) {
    const [ip, bits] = c.split('/') as [string, string | undefined]
    const family = isIPv4(ip) ? 'ipv4' : 'ipv6'
    for (const list of [all, family === 'ipv4' ? v4 : v6]) {
      if (bits === undefined) list.addAddress(ip, family)
      else list.addSubnet(ip, Number(bits), family)
    }
  }
  return {
    sidecar: (a) => all.check(a, isIPv4(a) ? 'ipv4' : 'ipv6'),
    nginx: (a) => (isIPv4(a) ? v4.check(a, 'ipv4') : v6.check(a, 'ipv6')),
  }
}

// ---- the two walks --------------------------------------------------------------------------------------

/**
 * ngx_http_get_forwarded_addr, recursive: the lines from the last, each from its right end
 * (ngx_http_get_forwarded_addr_internal); a line not read to its start (an untrusted address, something
 * ngx_parse_addr_port refuses) ends the walk where it is.
 */
function nginxWalk(lines: readonly string[], peer: string, trusted: (a: string) => boolean): string {
  let address = peer
  const readToStart = (xff: string): boolean => {
    let length = xff.length
    let p: number
    do {
      if (!trusted(address)) return false
      // the separators at the end, then the element before them: nginx separates at spaces as at commas
      p = length - 1
      for (; p > 0; p--, length--) if (xff[p] !== ' ' && xff[p] !== ',') break
      for (; p > 0; p--)
        if (xff[p] === ' ' || xff[p] === ',') {
          p++
          break
        }
      // an empty line: nginx reads the byte before it, never an address
      const next = p < 0 ? undefined : ngxParseAddrPort(xff.slice(p, length))
      if (next === undefined) return false
      address = next
      length = p - 1
    } while (p > 0)
    return true
  }
  for (let i = lines.length - 1; i >= 0 && readToStart(lines[i]!); i--);
  return address
}

const stripOws = (s: string) => s.replace(/^[ \t]+|[ \t]+$/g, '')

/** the sidecar's walk as docs/reference.md has it, over the lines as Node joins them */
function sidecarWalk(lines: readonly string[], peer: string, trusted: (a: string) => boolean): string {
  let client = peer
  if (!trusted(client) || lines.length === 0) return client
  const elements = lines.map(stripOws).join(', ').split(',')
  for (let i = elements.length - 1, n = 0; i >= 0 && n < MAX_HOPS; i--, n++) {
    if (elements[i]!.length > MAX_ENTRY_LENGTH) return client
    const element = stripOws(elements[i]!)
    if (element === '') continue
    const next = sidecarParse(element)
    if (next === undefined) return client
    client = next
    if (!trusted(client)) return client
  }
  return client
}

// ---- the grammar ----------------------------------------------------------------------------------------

const PEERS = ['127.0.0.1', '127.0.0.2', '127.0.0.9', '127.1.2.3', '127.255.0.1', '::1']
const V4 = ['127.0.0.1', '127.0.0.2', '127.1.2.3', '10.0.0.1', '10.1.2.3', '192.0.2.7', '203.0.113.9']
const V6 = [
  '::1',
  '2001:db8::1',
  '2001:db8::a:1',
  'fe80::1',
  '::ffff:10.0.0.1',
  '::ffff:127.0.0.2',
  '2001:DB8::B',
  '2001:db8:0:0:0:0:0:1',
  '::FFFF:10.0.0.2',
  '::ffff:a00:3',
  '0:0:0:0:0:ffff:127.0.0.2',
]

const cidr = fc
  .oneof(
    fc.record({ ip: fc.constantFrom(...PEERS.filter(isIPv4), ...V4), bits: fc.integer({ min: 0, max: 32 }) }),
    fc.record({ ip: fc.constantFrom(...V6), bits: fc.integer({ min: 0, max: 128 }) }),
    fc.record({ ip: fc.constantFrom(...V4, ...V6), bits: fc.constant(undefined) }),
  )
  .map(({ ip, bits }) => (bits === undefined ? ip : `${ip}/${bits}`))
const cidrSet = fc.array(
  fc.oneof(
    { arbitrary: cidr, weight: 4 },
    {
      arbitrary: fc.constantFrom(
        '127.0.0.2',
        '127.0.0.0/8',
        '127.0.0.0/30',
        '::1',
        '::ffff:127.0.0.1/128',
        '::ffff:127.0.0.0/104',
        '::ffff:10.0.0.0/104',
        '10.0.0.0/8',
        '2001:db8::/32',
        '::/80',
      ),
      weight: 3,
    },
  ),
  { minLength: 1, maxLength: 5 },
)

/** an element and the differences it can show */
interface Element {
  text: string
  marks: Difference[]
}
const element = (text: string, ...marks: Difference[]): Element => ({ text, marks })

const port = fc.constantFrom('80', '1', '65535', '8443', '0', '65536', '99999')
const address = fc.oneof(
  { arbitrary: fc.constantFrom(...V4, ...V6).map((a) => element(a)), weight: 12 },
  { arbitrary: fc.tuple(fc.constantFrom(...V4), port).map(([a, p]) => element(`${a}:${p}`)), weight: 3 },
  {
    arbitrary: fc.tuple(fc.constantFrom(...V6), port).map(([a, p]) => element(`[${a}]:${p}`)),
    weight: 3,
  },
  { arbitrary: fc.constantFrom(...V6).map((a) => element(`[${a}]`, 'bracketed')), weight: 1 },
  {
    arbitrary: fc.constantFrom('fe80::1%eth0', 'fe80::1%1', '[fe80::1%eth0]:80').map((a) => element(a)),
    weight: 1,
  },
  {
    arbitrary: fc.constantFrom('010.0.0.1', '127.000.0.2', '10.01.2.3').map((a) => element(a, 'leadingZero')),
    weight: 1,
  },
  {
    arbitrary: fc
      .constantFrom(
        'unknown',
        '_hidden',
        'abc',
        '1.2.3',
        '300.1.2.3',
        '::g',
        '-',
        'for=10.0.0.1',
        '10.0.0.1;x',
      )
      .map((a) => element(a)),
    weight: 2,
  },
  // NBSP is obs-text, not whitespace, to HTTP
  { arbitrary: fc.constantFrom(...V4).map((a) => element(`\xa0${a}`)), weight: 1 },
  {
    arbitrary: fc
      .tuple(fc.constantFrom(...V4), fc.constantFrom(...V4))
      .map(([a, b]) => element(`${a} ${b}`, 'spaced')),
    weight: 1,
  },
  { arbitrary: fc.constant(element('')), weight: 2 },
)
const padding = fc.oneof(
  { arbitrary: fc.constantFrom('', '', '', ' ', '  ').map((p) => element(p)), weight: 10 },
  { arbitrary: fc.constantFrom('\t', ' \t').map((p) => element(p, 'tab')), weight: 1 },
  { arbitrary: fc.constant(element(' '.repeat(MAX_ENTRY_LENGTH + 10), 'long')), weight: 1 },
)
const padded = fc.tuple(padding, address, padding).map(([before, a, after]) => ({
  text: before.text + a.text + after.text,
  marks: [...before.marks, ...a.marks, ...after.marks],
}))
/** a chain of trusted-looking hops, past the sidecar's cap */
const longChain = fc
  .array(fc.constantFrom('127.0.0.2', '127.1.2.3', '10.1.2.3', '::1'), {
    minLength: MAX_HOPS - 2,
    maxLength: 45,
  })
  .map((hops) => hops.map((h) => element(h)))
const line = fc
  .tuple(
    fc.oneof(
      { arbitrary: fc.array(padded, { maxLength: 6 }), weight: 8 },
      { arbitrary: longChain, weight: 1 },
    ),
    fc.constantFrom(', ', ',', ' ,'),
  )
  .map(([elements, separator]) => ({
    text: elements.map((e) => e.text).join(separator),
    marks: elements.flatMap((e) => e.marks),
  }))

const OTHER_CLIENT_HEADERS = [
  'X-Real-IP: 10.9.9.9',
  'True-Client-IP: 10.9.9.9',
  'Forwarded: for=10.9.9.9',
  'X-Forwarded: for=10.9.9.9',
  'X_Forwarded_For: 10.9.9.9',
  'X-Forwarded-For-Original: 10.9.9.9',
  'CF-Connecting-IP: 10.9.9.9',
  'Client-IP: 10.9.9.9',
]
type Protocol = 'h1' | 'h2'
/** HTTP/2 forbids whitespace at either end of a field value (RFC 9113 §8.2.1) */
const h2Value = (text: string) => text.replace(/^[ \t]+|[ \t]+$/g, '')
const isPadded = (text: string) => /^[ \t]|[ \t]$/.test(text)
const sentCase = fc
  .record({
    protocol: fc.oneof(
      { arbitrary: fc.constant<Protocol>('h1'), weight: 2 },
      { arbitrary: fc.constant<Protocol>('h2'), weight: 1 },
    ),
    peer: fc.constantFrom(...PEERS),
    lines: fc.oneof(
      { arbitrary: fc.array(line, { maxLength: 3 }), weight: 4 },
      { arbitrary: fc.constant<Element[]>([]), weight: 1 },
    ),
    others: fc.subarray(OTHER_CLIENT_HEADERS),
    /** over HTTP/2, whether lines keep the whitespace at their ends that HTTP/2 forbids */
    h2Padded: fc.oneof(
      { arbitrary: fc.constant(false), weight: 4 },
      { arbitrary: fc.constant(true), weight: 1 },
    ),
  })
  .map(({ h2Padded, ...c }) =>
    c.protocol === 'h1' || h2Padded
      ? c
      : { ...c, lines: c.lines.map((l) => ({ ...l, text: h2Value(l.text) })) },
  )
interface Case {
  protocol: Protocol
  peer: string
  lines: Element[]
  others: string[]
}

// ---- sending --------------------------------------------------------------------------------------------

/** one raw HTTP/1.1 request from `localAddress` on loopback, TLS when `ca` is given; the whole answer */
async function send(
  port: number,
  localAddress: string,
  request: Buffer,
  ca?: string,
): Promise<{ status: number; body: string }> {
  const host = isIPv4(localAddress) ? '127.0.0.1' : '::1'
  const socket =
    ca === undefined
      ? netConnect({ host, port, localAddress })
      : tlsConnect({
          socket: netConnect({ host, port, localAddress }),
          ca,
          servername: 'localhost',
        })
  let raw = ''
  socket.setEncoding('latin1')
  socket.on('data', (c: string) => {
    raw += c
  })
  socket.write(request)
  await once(socket, 'close')
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0)
  return { status, body: raw.slice(raw.indexOf('\r\n\r\n') + 4) }
}

/**
 * one HTTP/2 request on its own session from `localAddress` (h2c, or h2 over TLS when `ca` is given), each
 * X-Forwarded-For line its own field line, as node:http2 sends an array; the whole answer
 */
async function sendH2(
  port: number,
  localAddress: string,
  path: string,
  c: Case,
  ca?: string,
): Promise<{ status: number; body: string }> {
  const host = isIPv4(localAddress) ? '127.0.0.1' : '::1'
  const session = h2Connect(`${ca === undefined ? 'http' : 'https'}://localhost`, {
    createConnection: () =>
      ca === undefined
        ? netConnect({ host, port, localAddress })
        : tlsConnect({
            socket: netConnect({ host, port, localAddress }),
            ca,
            servername: 'localhost',
            ALPNProtocols: ['h2'],
          }),
  })
  session.on('error', () => {})
  try {
    const headers: Record<string, string | string[]> = { ':path': path, ':authority': 'x' }
    if (c.lines.length > 0) headers['x-forwarded-for'] = c.lines.map((l) => l.text)
    for (const other of c.others) {
      const colon = other.indexOf(':')
      headers[other.slice(0, colon)] = other.slice(colon + 2)
    }
    const stream = session.request(headers, { endStream: true })
    const [response] = (await once(stream, 'response')) as [Record<string, string | number>]
    let body = ''
    stream.setEncoding('latin1')
    stream.on('data', (chunk: string) => {
      body += chunk
    })
    await once(stream, 'end')
    return { status: Number(response[':status']), body }
  } finally {
    session.close()
  }
}

function requestBytes(path: string, c: Case): Buffer {
  const head = [
    `GET ${path} HTTP/1.1`,
    'Host: x',
    ...c.lines.map((l) => `X-Forwarded-For: ${l.text}`),
    ...c.others,
  ]
  return Buffer.from(`${head.join('\r\n')}\r\nConnection: close\r\n\r\n`, 'latin1')
}

/**
 * the lines as each server has them: over HTTP/1.1 nginx drops the spaces around a value, Node the spaces
 * and tabs; over HTTP/2 nginx keeps a value as it came, node:http2 drops a line with whitespace at an end
 */
const nginxLines = (c: Case) =>
  c.lines.map((l) => (c.protocol === 'h2' ? l.text : l.text.replace(/^ +| +$/g, '')))
const nodeLines = (c: Case) =>
  c.lines.map((l) => l.text).filter((text) => c.protocol === 'h1' || !isPadded(text))

/** what makes nginx's answer and the sidecar's differ in this case, of the differences one could explain */
function differencesIn(c: Case, trust: Trust): Set<Difference> {
  const marks = new Set<Difference>(c.lines.flatMap((l) => l.marks))
  const joined = nodeLines(c).map(stripOws).join(', ')
  if (joined.split(',').length > MAX_HOPS) marks.add('cap')
  if (nginxLines(c).some((l, i) => i > 0 && /^,|^$/.test(l))) marks.add('lineStart')
  const addresses = [c.peer, ...joined.split(',').map((e) => sidecarParse(stripOws(e)) ?? '')].filter(Boolean)
  if (addresses.some((a) => trust.sidecar(a) !== trust.nginx(a))) marks.add('mappedCidr')
  if (c.lines.some((l) => /\t/.test(l.text))) marks.add('tab')
  if (c.protocol === 'h2' && c.lines.some((l) => isPadded(l.text))) marks.add('h2Padded')
  return marks
}

// ---- the test -------------------------------------------------------------------------------------------

/** one case as both answered it */
interface Answered {
  c: Case
  path: string
  nginx: string
  sidecar: string
}

/**
 * One written example of each documented difference, and of the forms both read alike that the sidecar once
 * read otherwise: from the trusted 127.0.0.2, with 10.0.0.0/8 trusted and 198.51.100.0/24 trusted only as
 * the v4-mapped part of an IPv6 CIDR. 203.0.113.9 is the client.
 */
const EXAMPLE_CIDRS = ['127.0.0.2', '10.0.0.0/8', '::ffff:198.51.100.0/120']
const EXAMPLES: {
  lines: string[]
  nginx: string
  sidecar: string
  difference?: Difference
  /** sent over HTTP/2 only (else over both) */
  h2Only?: true
}[] = [
  { lines: ['203.0.113.9,\t10.0.0.1'], nginx: '127.0.0.2', sidecar: '203.0.113.9', difference: 'tab' },
  // nginx cannot read the element with its space; node:http2 dropped the line, so the sidecar reads the first
  {
    lines: ['203.0.113.9', ' 192.0.2.7'],
    nginx: '127.0.0.2',
    sidecar: '203.0.113.9',
    difference: 'h2Padded',
    h2Only: true,
  },
  { lines: ['203.0.113.9 10.0.0.1'], nginx: '203.0.113.9', sidecar: '127.0.0.2', difference: 'spaced' },
  {
    lines: ['203.0.113.9, 010.0.0.1'],
    nginx: '203.0.113.9',
    sidecar: '127.0.0.2',
    difference: 'leadingZero',
  },
  { lines: ['[2001:db8::1]'], nginx: '127.0.0.2', sidecar: '2001:db8::1', difference: 'bracketed' },
  {
    lines: [`203.0.113.9${', 10.0.0.1'.repeat(MAX_HOPS + 5)}`],
    nginx: '203.0.113.9',
    sidecar: '10.0.0.1',
    difference: 'cap',
  },
  {
    lines: [`203.0.113.9,${' '.repeat(MAX_ENTRY_LENGTH)}10.0.0.1`],
    nginx: '203.0.113.9',
    sidecar: '127.0.0.2',
    difference: 'long',
  },
  {
    lines: ['203.0.113.9', ', 10.0.0.1'],
    nginx: '10.0.0.1',
    sidecar: '203.0.113.9',
    difference: 'lineStart',
  },
  {
    lines: ['203.0.113.9', '', '10.0.0.1'],
    nginx: '10.0.0.1',
    sidecar: '203.0.113.9',
    difference: 'lineStart',
  },
  {
    lines: ['203.0.113.9, 198.51.100.7'],
    nginx: '198.51.100.7',
    sidecar: '203.0.113.9',
    difference: 'mappedCidr',
  },
  // read alike: empty elements are skipped, and so is the space around an element, and nothing else
  { lines: ['203.0.113.9, , 10.0.0.1,'], nginx: '203.0.113.9', sidecar: '203.0.113.9' },
  {
    lines: ['203.0.113.9', '10.0.0.1:8080', '[::ffff:10.0.0.2]:1'],
    nginx: '203.0.113.9',
    sidecar: '203.0.113.9',
  },
  { lines: ['203.0.113.9,\xa010.0.0.1'], nginx: '127.0.0.2', sidecar: '127.0.0.2' },
  { lines: ['203.0.113.9, fe80::1%eth0'], nginx: '127.0.0.2', sidecar: '127.0.0.2' },
  { lines: ['203.0.113.9, 10.0.0.1:0'], nginx: '127.0.0.2', sidecar: '127.0.0.2' },
  { lines: ['203.0.113.9, [::ffff:10.0.0.1]:65536'], nginx: '127.0.0.2', sidecar: '127.0.0.2' },
  { lines: ['203.0.113.9, unknown'], nginx: '127.0.0.2', sidecar: '127.0.0.2' },
  // and both name an address one way, whatever its spelling (nginx's v4-mapped form is read as its IPv4 one)
  { lines: ['2001:DB8:0:0::B'], nginx: '2001:db8::b', sidecar: '2001:db8::b' },
  { lines: ['203.0.113.9, ::FFFF:a00:1'], nginx: '203.0.113.9', sidecar: '203.0.113.9' },
  { lines: ['::ffff:203.0.113.9'], nginx: '203.0.113.9', sidecar: '203.0.113.9' },
]

t.test(
  'the client address behind trusted proxies is nginx realip’s',
  { skip: skipWithoutNginx },
  async (t) => {
    const sets = fc.sample(fc.tuple(cidrSet, fc.array(sentCase, { minLength: CASES, maxLength: CASES })), {
      numRuns: SETS,
      seed: PROPERTY_SEED,
    })
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const { ca, server } = await createServerPki()
    const listen = {
      http: '127.0.0.1:0',
      https: { address: '[::1]:0', cert: server.certFile, key: server.keyFile },
    }
    const config = (trustedProxies: string[]) => ({
      service: 'realip',
      upstream: upstream.url,
      listen,
      forwardedClientCert: { trustedProxies, format: 'xfcc' },
    })
    const sidecar = await startTestSidecar(t, config(['127.0.0.2']))
    const httpPort = sidecar.proxyAddress.port
    const httpsPort = sidecar.httpsAddress!.port
    const failures: string[] = []

    /** the cases from their peers to an nginx and the sidecar, both trusting `cidrs`; each held to its walk */
    async function answer(name: string, cidrs: string[], cases: Case[]): Promise<Answered[]> {
      const trust = trustOf(cidrs)
      // nginx 1.22 takes h2c with prior knowledge only on a listener of its own
      const h2cPort = await freePort()
      const nginx = await startNginx(
        t,
        await scratchDir('realip'),
        (p) => `    listen 127.0.0.1:${p};
    listen [::1]:${p};
    listen 127.0.0.1:${h2cPort} http2;
    listen [::1]:${h2cPort} http2;
${cidrs.map((c) => `    set_real_ip_from ${c};`).join('\n')}
    real_ip_header X-Forwarded-For;
    real_ip_recursive on;
    location / { return 200 "$remote_addr|$realip_remote_addr|end"; }`,
      )
      t.ok(await sidecar.reload(config(cidrs)), `${name}: the sidecar trusts ${cidrs.join(' ')}`)
      const sent = await mapLimit(cases, CONCURRENCY, async (c, i) => {
        const path = `/c/${name}/${i}/${c.protocol}`
        const v4 = isIPv4(c.peer)
        const sidecarPort = v4 ? httpPort : httpsPort
        const sidecarCa = v4 ? undefined : ca.certPem
        if (c.protocol === 'h2') {
          const fromNginx = await sendH2(h2cPort, c.peer, path, c)
          const fromSidecar = await sendH2(sidecarPort, c.peer, path, c, sidecarCa)
          return { c, path, fromNginx, fromSidecar }
        }
        const request = requestBytes(path, c)
        const fromNginx = await send(nginx.port, c.peer, request)
        const fromSidecar = await send(sidecarPort, c.peer, request, sidecarCa)
        return { c, path, fromNginx, fromSidecar }
      })
      const audited = await eventually(
        async () => {
          const res = await fetch(`${sidecar.adminUrl}/audit?limit=1000`)
          const events = ((await res.json()) as { events: { path: string; client_address: string }[] }).events
          const byPath = new Map(events.map((e) => [e.path, e.client_address]))
          return sent.every((a) => byPath.has(a.path)) ? byPath : undefined
        },
        { what: `${name}: every request audited` },
      )
      const answered: Answered[] = []
      for (const { c, path, fromNginx, fromSidecar } of sent) {
        const describe = () =>
          JSON.stringify({
            cidrs,
            protocol: c.protocol,
            peer: c.peer,
            lines: c.lines.map((l) => l.text),
            nginx: fromNginx.body,
          })
        if (fromNginx.status !== 200 || fromSidecar.status !== 200) {
          failures.push(
            `${path}: status nginx ${fromNginx.status}, sidecar ${fromSidecar.status} ${describe()}`,
          )
          continue
        }
        const [remoteAddr, realipRemoteAddr] = fromNginx.body.split('|')
        // nginx writes a v4-mapped address as such; the sidecar names it by its IPv4 address (documented)
        const a = { c, path, nginx: canonical(remoteAddr!), sidecar: audited.get(path)! }
        answered.push(a)
        if (canonical(realipRemoteAddr!) !== canonical(c.peer))
          failures.push(`${path}: nginx saw peer ${realipRemoteAddr} ${describe()}`)
        const nginxWalked = nginxWalk(nginxLines(c), canonical(c.peer), trust.nginx)
        if (a.nginx !== nginxWalked)
          failures.push(`${path}: nginx ${a.nginx}, its walk ${nginxWalked} ${describe()}`)
        const sidecarWalked = sidecarWalk(nodeLines(c), canonical(c.peer), trust.sidecar)
        if (a.sidecar !== sidecarWalked)
          failures.push(`${path}: sidecar ${a.sidecar}, documented ${sidecarWalked} ${describe()}`)
        // the attacker's side: a peer it does not trust is its own client, whatever it sends
        if (!trust.sidecar(canonical(c.peer)) && a.sidecar !== canonical(c.peer))
          failures.push(`${path}: untrusted peer moved to ${a.sidecar} ${describe()}`)
        if (a.sidecar !== a.nginx && differencesIn(c, trust).size === 0)
          failures.push(
            `${path}: sidecar ${a.sidecar}, nginx ${a.nginx}, no documented difference ${describe()}`,
          )
      }
      return answered
    }

    // each example on both protocols: over HTTP/2 each line is a field line of its own, the empty one too
    const sentExamples = (['h1', 'h2'] as const).flatMap((protocol) =>
      EXAMPLES.filter((e) => protocol === 'h2' || !e.h2Only).map((e) => ({ e, protocol })),
    )
    const examples = await answer(
      'examples',
      EXAMPLE_CIDRS,
      sentExamples.map(({ e, protocol }) => ({
        protocol,
        peer: '127.0.0.2',
        lines: e.lines.map((text) => element(text, ...(e.difference === undefined ? [] : [e.difference]))),
        others: OTHER_CLIENT_HEADERS,
      })),
    )
    t.equal(examples.length, sentExamples.length, 'every example answered by both')
    examples.forEach((a, i) => {
      const { e, protocol } = sentExamples[i]!
      const why = e.difference === undefined ? 'read alike' : DOCUMENTED_DIFFERENCES[e.difference]
      t.same(
        { nginx: a.nginx, sidecar: a.sidecar },
        { nginx: e.nginx, sidecar: e.sidecar },
        `${protocol} ${JSON.stringify(e.lines)}: ${why}`,
      )
    })
    t.same(
      new Set(EXAMPLES.flatMap((e) => e.difference ?? [])),
      new Set(Object.keys(DOCUMENTED_DIFFERENCES)),
      'an example of each difference',
    )

    const seen = Object.fromEntries(Object.keys(DOCUMENTED_DIFFERENCES).map((k) => [k, 0])) as Record<
      Difference,
      number
    >
    let agreed = 0
    let untrusted = 0
    let moved = 0
    let overH2 = 0
    let h2MovedOverLines = 0
    for (const [s, [cidrs, cases]] of sets.entries()) {
      const trust = trustOf(cidrs)
      for (const a of await answer(`set${s}`, cidrs, cases)) {
        if (a.c.protocol === 'h2') {
          overH2++
          if (a.c.lines.length > 1 && a.sidecar !== canonical(a.c.peer)) h2MovedOverLines++
        }
        if (a.sidecar === a.nginx) agreed++
        else for (const d of differencesIn(a.c, trust)) seen[d]++
        if (!trust.sidecar(canonical(a.c.peer))) untrusted++
        else if (a.sidecar !== canonical(a.c.peer)) moved++
      }
    }
    t.same(failures.slice(0, 20), [], `${failures.length} disagreements`)
    t.comment(
      `agreed ${agreed} of ${SETS * CASES}; where not, the differences present: ${JSON.stringify(seen)}`,
    )
    t.ok(agreed > (SETS * CASES) / 2, 'most generated cases agree')
    t.ok(untrusted > SETS * 3, `an untrusted peer in ${untrusted} cases`)
    t.ok(moved > SETS * 3, `the client address moved off a trusted peer in ${moved} cases`)
    t.ok(overH2 > SETS * 8, `over HTTP/2 in ${overH2} cases`)
    t.ok(h2MovedOverLines > SETS / 2, `moved over several HTTP/2 field lines in ${h2MovedOverLines} cases`)
  },
)
