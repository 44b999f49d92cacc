// The live view opened from another machine (the admin port reached over the pod network, not through
// kubectl port-forward): a browser can't put a bearer token on the page's own navigation or on its
// EventSource, so the token is accepted as the password of HTTP Basic auth. Real headless Chromium answers
// the challenge once and then sends the credentials with /identities, /events and /audit, so the page fills
// and keeps streaming; without them, or with a wrong token, nothing is shown.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'
import { launchChromium, skipWithoutChromium } from '../helpers/browser.ts'
import { identity, requestEvent } from '../helpers/events.ts'

const TOKEN = 'remote-operator-token-7f3a'

t.test(
  'a remote browser with the token as Basic password gets the live view',
  { skip: skipWithoutChromium },
  async (t) => {
    const telemetry = new Telemetry(configSchema.parse({ service: 'shop', audit: { output: 'off' } }), {
      version: 'test',
    })
    const url = await startAdmin(t, telemetry, {
      access: () => ({ token: () => TOKEN, allowedHosts: [] }),
      // every test socket is on loopback: this seam makes the server treat the browser as another pod
      isLocalPeer: () => false,
    })
    const first = identity('orders/api', { kind: 'service', source: 'jwt', verified: true })
    telemetry.record(requestEvent({ identity: first, path: '/api/orders' }))

    const browser = await launchChromium()
    t.teardown(() => browser.close())

    // what the browser gets first: a 401 with a challenge it can answer
    const refused = await fetch(`${url}/ui`)
    t.equal(refused.status, 401, 'no credentials: 401')
    t.match(refused.headers.get('www-authenticate'), /Basic realm="nhi-proxy admin"/, 'a Basic challenge')
    const basic = (password: string) => `Basic ${Buffer.from(`operator:${password}`).toString('base64')}`
    t.equal(
      (await fetch(`${url}/ui`, { headers: { authorization: basic('not-the-token') } })).status,
      401,
      'a wrong token: 401',
    )
    t.equal(
      (await fetch(`${url}/audit`, { headers: { authorization: basic(TOKEN) } })).status,
      200,
      'the API takes it too',
    )
    t.equal(
      (await fetch(`${url}/audit`, { headers: { authorization: 'Basic !!!' } })).status,
      401,
      'not base64: 401',
    )
    t.equal(
      (
        await fetch(`${url}/audit`, {
          headers: { authorization: `Basic ${Buffer.from(TOKEN).toString('base64')}` },
        })
      ).status,
      401,
      'no user:password pair: 401',
    )

    // a browser with the wrong credentials is refused
    const wrong = await browser.newContext({
      httpCredentials: { username: 'operator', password: 'not-the-token' },
    })
    const wrongPage = await (await wrong.newPage()).goto(`${url}/ui`)
    t.equal(wrongPage?.status(), 401, 'a wrong token: still 401, no page')

    const operator = await browser.newContext({ httpCredentials: { username: 'anyone', password: TOKEN } })
    const page = await operator.newPage()
    const pageErrors: string[] = []
    page.on('pageerror', (e) => pageErrors.push(e.message))
    t.equal((await page.goto(`${url}/ui`))?.status(), 200, 'the token as the password opens /ui')
    await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 })
    await page.waitForSelector('#identity-rows tr[data-identity="orders/api"]')

    // a caller seen only after the page loaded reaches it through the /events stream
    const later = identity('billing/worker', { kind: 'service', source: 'xfcc', verified: true })
    const feeder = setInterval(
      () => telemetry.record(requestEvent({ identity: later, path: '/api/bill' })),
      100,
    )
    t.teardown(() => clearInterval(feeder))
    await page.waitForSelector('#events li', { timeout: 10_000 })
    await page.waitForSelector('#identity-rows tr[data-identity="billing/worker"]', { timeout: 10_000 })
    t.same(pageErrors, [], 'no page errors')
  },
)
