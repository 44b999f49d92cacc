// Verified bots per product, on the built bundle: where an operator publishes one range file per product,
// a crawler claim is checked against the file of the product the user agent is named after. OpenAI's
// ChatGPT-User fetches a URL for whoever asks ChatGPT to, so an address in chatgpt-user.json must not make a
// GPTBot claim (which a site may allow more) verified, and an address of Google's user-triggered fetchers or
// special crawlers must not make a Googlebot claim verified. The client address is the one the trusted front
// proxy (the test client on 127.0.0.1) appended to X-Forwarded-For.
import { createServer } from 'node:http'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { listenUntilTeardown } from '../helpers/net.ts'
import { runCli, startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const GPTBOT =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)'
const CHATGPT_USER =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot'
const SEARCHBOT =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; OAI-SearchBot/1.0; +https://openai.com/searchbot)'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const VERTEXBOT =
  'Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.175 Mobile Safari/537.36 (compatible; Google-CloudVertexBot; +https://cloud.google.com/enterprise-search)'

// in the shipped snapshot: each in one OpenAI file only
const GPTBOT_ADDRESS = '132.196.86.1' // gptbot.json 132.196.86.0/24
const CHATGPT_USER_ADDRESS = '104.208.184.193' // chatgpt-user.json 104.208.184.192/28
const SEARCHBOT_ADDRESS = '135.234.64.1' // searchbot.json 135.234.64.0/24

interface Seen {
  identity: string
  verified: string
  anomalies: unknown
  /** the client address the proxy attributed the request to */
  clientAddress: unknown
}

async function sidecarBehindTrustedProxy(
  t: Test,
  verify: Record<string, unknown> = {},
): Promise<TestSidecar> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  return startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    forwardedClientCert: { format: 'xfcc', trustedProxies: ['127.0.0.1/32'] },
    bots: { verify },
  })
}

/** What the upstream was told and what the audit record says of one request from `address`. */
function sender(sidecar: TestSidecar) {
  let n = 0
  return async (ua: string, address: string): Promise<Seen> => {
    const requestId = `per-product-${++n}`
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      headers: { 'user-agent': ua, 'x-forwarded-for': address, 'x-request-id': requestId },
    })
    const headers = ((await res.body.json()) as { headers: Record<string, string> }).headers
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return ((await r.body.json()) as { events: Record<string, unknown>[] }).events[0]
    })
    return {
      identity: headers['x-nhi-identity']!,
      verified: headers['x-nhi-verified']!,
      anomalies: audit['anomalies'],
      clientAddress: audit['client_address'],
    }
  }
}

const notVerified = (name: string, clientAddress: string): Seen => ({
  identity: `ua:${name}`,
  verified: 'false',
  anomalies: ['unverified_claim'],
  clientAddress,
})
const verified = (name: string, clientAddress: string): Seen => ({
  identity: name,
  verified: 'true',
  anomalies: [],
  clientAddress,
})

t.test("OpenAI: each product is verified by its own range file, never by a sibling's", async (t) => {
  const send = sender(await sidecarBehindTrustedProxy(t))

  t.same(
    await send(GPTBOT, CHATGPT_USER_ADDRESS),
    notVerified('gptbot', CHATGPT_USER_ADDRESS),
    'GPTBot from a ChatGPT-User address: not verified, counted',
  )
  t.same(
    await send(GPTBOT, GPTBOT_ADDRESS),
    verified('gptbot', GPTBOT_ADDRESS),
    'GPTBot from a GPTBot address: verified',
  )

  t.same(
    await send(CHATGPT_USER, GPTBOT_ADDRESS),
    notVerified('chatgpt-user', GPTBOT_ADDRESS),
    'ChatGPT-User from a GPTBot address: not verified',
  )
  t.same(
    await send(CHATGPT_USER, CHATGPT_USER_ADDRESS),
    verified('chatgpt-user', CHATGPT_USER_ADDRESS),
    'ChatGPT-User from its own range: verified',
  )
  t.same(
    await send(SEARCHBOT, CHATGPT_USER_ADDRESS),
    notVerified('oai-searchbot', CHATGPT_USER_ADDRESS),
    'OAI-SearchBot from a ChatGPT-User address: not verified',
  )
  t.same(
    await send(SEARCHBOT, SEARCHBOT_ADDRESS),
    verified('oai-searchbot', SEARCHBOT_ADDRESS),
    'OAI-SearchBot from its own range: verified',
  )
})

t.test(
  "Google: Googlebot is verified by googlebot.json only, not by the special crawlers' or user-triggered fetchers' files",
  async (t) => {
    // Google's files as a mirror serves them (the file names Google publishes), fetched over HTTP at start
    const files: Record<string, string> = {
      '/googlebot.json': '198.51.100.0/24',
      '/special-crawlers.json': '203.0.113.0/24',
      '/user-triggered-fetchers.json': '192.0.2.0/24',
      '/user-triggered-fetchers-google.json': '100.64.0.0/24',
    }
    const port = await listenUntilTeardown(
      t,
      createServer((req, res) => {
        const prefix = files[req.url ?? '']
        res.statusCode = prefix ? 200 : 404
        res.end(JSON.stringify({ creationTime: '2026-09-01T00:00:00Z', prefixes: [{ ipv4Prefix: prefix }] }))
      }),
    )
    const sidecar = await sidecarBehindTrustedProxy(t, {
      shippedRanges: false,
      ranges: Object.keys(files).map((path) => ({
        operator: 'Google',
        url: `http://127.0.0.1:${port}${path}`,
      })),
    })
    const send = sender(sidecar)

    // the sidecar listens once the first fetch of every configured file is done: the mirror's googlebot.json
    // is in use (nothing else is known of Google), and so are the other three
    t.same(
      await send(GOOGLEBOT, '198.51.100.7'),
      verified('googlebot', '198.51.100.7'),
      'Googlebot from a googlebot.json address: verified',
    )
    t.same(
      await send(GOOGLEBOT, '192.0.2.7'),
      notVerified('googlebot', '192.0.2.7'),
      'Googlebot from a user-triggered fetcher address: not verified, counted',
    )
    t.same(
      await send(GOOGLEBOT, '100.64.0.7'),
      notVerified('googlebot', '100.64.0.7'),
      'Googlebot from a user-triggered-fetchers-google.json address: not verified, counted',
    )
    t.same(
      await send(GOOGLEBOT, '203.0.113.7'),
      notVerified('googlebot', '203.0.113.7'),
      'Googlebot from a special crawler address: not verified, counted',
    )
    t.same(
      await send('Googlebot-Image/1.0', '192.0.2.8'),
      notVerified('googlebot-image', '192.0.2.8'),
      'nor any other product googlebot.json vouches for',
    )
    t.same(await send('Googlebot-Image/1.0', '198.51.100.8'), verified('googlebot-image', '198.51.100.8'))

    // explain, given the sidecar's config, fetches the same files and gives the same answer
    for (const [address, isVerified] of [
      ['198.51.100.7', true],
      ['192.0.2.7', false],
    ] as const) {
      const explained = await runCli([
        'explain',
        '-c',
        sidecar.configPath,
        '--ua',
        GOOGLEBOT,
        '--remote-addr',
        address,
        '--json',
      ])
      t.equal(explained.code, 0, explained.stderr)
      t.match(
        JSON.parse(explained.stdout).identity,
        { name: isVerified ? 'googlebot' : 'ua:googlebot', verified: isVerified },
        `explain: Googlebot from ${address} ${isVerified ? 'verified by the fetched file' : 'not verified'}`,
      )
    }

    // Google-CloudVertexBot is one of the common crawlers googlebot.json covers: checked like Googlebot
    t.same(
      await send(VERTEXBOT, '198.51.100.9'),
      verified('google-cloudvertexbot', '198.51.100.9'),
      'Google-CloudVertexBot from a googlebot.json address: verified',
    )
    for (const [address, file] of [
      ['192.0.2.9', 'user-triggered-fetchers.json'],
      ['100.64.0.9', 'user-triggered-fetchers-google.json'],
      ['203.0.113.9', 'special-crawlers.json'],
      ['233.252.0.9', 'no file of Google'],
    ] as const) {
      t.same(
        await send(VERTEXBOT, address),
        notVerified('google-cloudvertexbot', address),
        `Google-CloudVertexBot from ${file}: not verified, counted`,
      )
    }
  },
)
