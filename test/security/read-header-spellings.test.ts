// The headers every request is attributed by, from the attacker's side: the user agent (always read) and the
// Web Bot Auth signature headers (read while signed agents are verified). A CGI/WSGI/Rack/PHP upstream reads
// `User_Agent` as HTTP_USER_AGENT like `User-Agent`: a client sending both would be classified by one and
// served by the other. Against the built bundle, over raw HTTP/1.1 and hand-encoded h2c requests, towards an
// HTTP/1.1 and an h2c upstream that record the names as they arrived: the other spellings are stripped and
// counted as spoofed_header, the exact name is read and forwarded, a request without them is not flagged, and
// no spelling arrives as a request trailer.
import t from 'tap'
import {
  completed,
  field,
  merged,
  type Pairs,
  RAW_CLIENTS,
  recordingUpstreams,
  sideFor,
  spoofed,
  spoofedComesTo,
} from '../helpers/header-spellings.ts'
import { createAgentKey, signRequest, startKeyDirectory } from '../helpers/signed-agent.ts'

t.setTimeout(120_000)

const BROWSER = 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
const CURL = 'curl/8.5.0'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'

const key = await createAgentKey()
const directory = await startKeyDirectory([key])
t.teardown(() => directory.close())
const AGENT = JSON.stringify(directory.origin)

const config = {
  service: 'shop',
  signedAgents: {
    authorities: ['app.example'],
    directories: [{ url: directory.url, name: 'agent.example' }],
  },
}
const upstreams = await recordingUpstreams(t)
const sides = [
  await sideFor(t, 'towards an HTTP/1.1 upstream', upstreams.h1, config),
  await sideFor(t, 'towards an h2c upstream', upstreams.h2c, config),
]

/** the pairs with lower-cased names: `User-Agent` is the exact name in any case, `User_Agent` is not */
const lower = (pairs: Pairs): Pairs => pairs.map(([n, v]) => [n.toLowerCase(), v])

/** the other spellings a client of each kind can put on the wire (HTTP/2 names are lower-case) */
const spellings = (client: string, name: string): string[] => {
  const underscored = name.replaceAll('-', '_')
  if (client === 'h2c') return [underscored]
  const capitalised = name.replace(/(^|-)([a-z])/g, (_, dash: string, c: string) => dash + c.toUpperCase())
  return [capitalised.replaceAll('-', '_'), underscored.toUpperCase(), underscored]
}

/** Signature, Signature-Input and Signature-Agent of a fresh Web Bot Auth signature for app.example */
const signed = async (): Promise<Pairs> =>
  Object.entries(await signRequest(key, 'http://app.example/h', { agent: AGENT }))

t.test('the user agent under another spelling never reaches the upstream', async (t) => {
  for (const s of sides) {
    for (const c of RAW_CLIENTS) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`

      // control: a browser's ordinary request is read as it is, and nothing about it is spoofed
      let before = await spoofed(s)
      let label = `${c.name} browser`
      const browser: Pairs = [
        ['User-Agent', BROWSER],
        ['Accept', 'text/html,application/xhtml+xml'],
        ['Accept-Language', 'en-GB,en;q=0.7'],
        ['Accept-Encoding', 'gzip, deflate, br'],
        ['Sec-Fetch-Mode', 'navigate'],
        ['Upgrade-Insecure-Requests', '1'],
      ]
      t.equal(await c.send(s.port, label, browser), c.ok, what('browser answered'))
      let got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'anonymous', what('a browser'))
      t.equal(field(got.headers, 'x-nhi-kind'), 'human')
      t.same(lower(merged(got.headers, 'user-agent')), [['user-agent', BROWSER]], what('forwarded as read'))

      for (const variant of spellings(c.name, 'user-agent')) {
        // beside the exact name: the exact one is classified and forwarded, the other stripped and counted
        label = `${c.name} ${variant} beside user-agent`
        const fields: Pairs = [
          ['User-Agent', CURL],
          [variant, GOOGLEBOT],
        ]
        t.equal(await c.send(s.port, label, fields), c.ok, what(`${variant} answered`))
        got = await completed(s, label)
        t.equal(field(got.headers, 'x-nhi-identity'), 'ua:curl', what(`${variant}: classified by user-agent`))
        t.equal(field(got.headers, 'x-nhi-kind'), 'bot')
        t.same(
          lower(merged(got.headers, 'user-agent')),
          [['user-agent', CURL]],
          what(`${variant}: only the exact name, with the value classified, reaches the upstream`),
        )
        // the browser's request came first: had it been counted, the count would pass this one
        t.ok(await spoofedComesTo(s, before + 1), what(`${variant}: spoofed_header counted`))
        before += 1
      }
      t.equal(await spoofed(s), before, what('the browser request was not counted'))

      // the other spelling alone: not read, so not the upstream's either
      const [variant] = spellings(c.name, 'user-agent')
      label = `${c.name} ${variant} alone`
      t.equal(await c.send(s.port, label, [[variant!, GOOGLEBOT]]), c.ok, what('variant alone answered'))
      got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'anonymous', what('the variant is not classified'))
      t.same(merged(got.headers, 'user-agent'), [], what('the variant alone is stripped'))
      t.ok(await spoofedComesTo(s, before + 1), what('spoofed_header counted for the variant alone'))
    }
  }
})

t.test('the signature headers under another spelling never reach the upstream', async (t) => {
  for (const s of sides) {
    for (const c of RAW_CLIENTS) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`

      // control: a signed agent's request verifies, and nothing about it is spoofed
      let before = await spoofed(s)
      let label = `${c.name} signed`
      let signature = await signed()
      t.equal(
        await c.send(s.port, label, [['User-Agent', CURL], ...signature]),
        c.ok,
        what('signed answered'),
      )
      let got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'agent.example', what('the signature verifies'))
      t.equal(field(got.headers, 'x-nhi-source'), 'signature')
      t.equal(field(got.headers, 'x-nhi-verified'), 'true')

      for (const name of ['signature-agent', 'signature-input']) {
        for (const variant of spellings(c.name, name)) {
          label = `${c.name} ${variant} beside ${name}`
          signature = await signed()
          const exact = signature.find(([n]) => n === name)![1]
          const forged =
            name === 'signature-agent' ? '"https://evil.example"' : 'sig2=("@authority");keyid="x"'
          const fields: Pairs = [['User-Agent', CURL], ...signature, [variant, forged]]
          t.equal(await c.send(s.port, label, fields), c.ok, what(`${variant} answered`))
          got = await completed(s, label)
          t.equal(
            field(got.headers, 'x-nhi-identity'),
            'agent.example',
            what(`${variant}: the exact name verified`),
          )
          t.equal(field(got.headers, 'x-nhi-verified'), 'true')
          t.same(
            lower(merged(got.headers, name)),
            [[name, exact]],
            what(`${variant}: only the exact name, with the value verified, reaches the upstream`),
          )
          // the signed request came first: had it been counted, the count would pass this one
          t.ok(await spoofedComesTo(s, before + 1), what(`${variant}: spoofed_header counted`))
          before += 1
        }
      }
      t.equal(await spoofed(s), before, what('the signed request alone was not counted'))

      // a spelling alone verifies nothing and says nothing to the upstream
      const [variant] = spellings(c.name, 'signature-agent')
      label = `${c.name} ${variant} alone`
      const alone: Pairs = [
        ['User-Agent', CURL],
        [variant!, AGENT],
      ]
      t.equal(await c.send(s.port, label, alone), c.ok, what('variant alone answered'))
      got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'ua:curl', what('the variant alone is not read'))
      t.same(merged(got.headers, 'signature-agent'), [], what('the variant alone is stripped'))
      t.ok(await spoofedComesTo(s, before + 1), what('spoofed_header counted for the variant alone'))
    }
  }
})

t.test('the user agent and the signature headers never travel as request trailers', async (t) => {
  const names = ['user-agent', 'signature-agent', 'signature-input', 'signature']
  for (const s of sides) {
    for (const c of RAW_CLIENTS) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`
      const label = `${c.name} trailers`
      const trailers: Pairs = [
        ...names.flatMap((n): Pairs => [n, ...spellings(c.name, n)].map((v) => [v, GOOGLEBOT])),
        ['x-digest', 'sha-256=ok'],
      ]
      t.equal(await c.send(s.port, label, [['User-Agent', CURL]], trailers), c.ok, what('answered'))
      const got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'ua:curl', what('attributed from the header section'))
      for (const n of names) {
        t.same(merged(got.trailers, n), [], what(`no spelling of ${n} as a trailer`))
        const spelt = new RegExp(n.replace('-', '[-_]'), 'i')
        t.notMatch(field(got.headers, 'trailer') ?? '', spelt, what(`${n} not announced in Trailer`))
      }
      // an h2 client's trailers reach HTTP/2 upstreams only (docs/reference.md "Deviations")
      if (c.name === 'HTTP/1.1' || s.upstream === upstreams.h2c)
        t.equal(field(got.trailers, 'x-digest'), 'sha-256=ok', what('other trailers still pass'))
    }
  }
})
