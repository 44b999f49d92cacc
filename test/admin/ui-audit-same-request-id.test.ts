// The live view's audit panel against the built bundle in real headless Chromium, when clients reuse an
// x-request-id (a retry keeps it; a client may also pick any printable id it likes): clicking a request's
// row shows that request's audit record, not the latest one that carried the same id.
import t from 'tap'
import { request } from 'undici'
import { launchChromium, skipWithoutChromium } from '../helpers/browser.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.test(
  'a row whose request id another request reused opens its own audit record',
  { skip: skipWithoutChromium },
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, { upstream: upstream.url })

    const browser = await launchChromium()
    t.teardown(() => browser.close())
    const page = await browser.newPage({ viewport: { width: 1366, height: 768 } })
    const pageErrors: string[] = []
    page.on('pageerror', (e) => pageErrors.push(e.message))
    await page.goto(`${sidecar.adminUrl}/ui`)
    await page.waitForSelector('body[data-loaded="true"]', { timeout: 15_000 })

    // the same id on two requests: the original, then its "retry" to another path with another status
    for (const path of ['/status/503', '/status/204']) {
      const res = await request(`${sidecar.proxyUrl}${path}`, { headers: { 'x-request-id': 'order-42' } })
      await res.body.dump()
    }
    await page.waitForFunction(
      () => document.querySelectorAll('#events li[data-request-id="order-42"]').length === 2,
      undefined,
      {
        timeout: 15_000,
      },
    )
    await page.hover('#events')
    const original = page.locator('#events li[data-request-id="order-42"]', { hasText: '/status/503' })
    await original.click()
    await page.waitForSelector('#audit-detail dd[data-field="path"]', { timeout: 15_000 })
    t.equal(await page.locator('#audit-detail dd[data-field="path"]').textContent(), '/status/503')
    t.equal(await page.locator('#audit-detail dd[data-field="status"]').textContent(), '503')
    t.same(pageErrors, [], 'no script errors on the page')

    // the same through the API: the request id names both requests, the proxy's span id one
    const audit = async (query: string) => {
      const res = await request(`${sidecar.adminUrl}/audit?${query}`)
      return ((await res.body.json()) as { events: { path: string }[] }).events.map((e) => e.path)
    }
    t.same((await audit('request_id=order-42')).sort(), ['/status/204', '/status/503'])
    const span = (await original.getAttribute('data-span-id'))!
    t.match(span, /^[0-9a-f]{16}$/)
    t.same(await audit(`span_id=${span}`), ['/status/503'])
  },
)
