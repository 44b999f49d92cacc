// The live view against `nhi-proxy demo` in real headless Chromium: every demo identity with its kind, the
// trust-boundary graph, an event click that opens its audit record, and a screenshot kept for CI.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { launchChromium, openEventAudit, skipWithoutChromium, splitChartSamples } from '../helpers/browser.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { spawnDemo } from '../helpers/sidecar.ts'

const DEMO_IDENTITIES: Record<string, string> = {
  'payments/api': 'service',
  'orders/worker': 'service',
  'inventory/sync': 'service',
  'web/frontend': 'service',
  'reporting-service': 'service',
  'ci/nightly-etl': 'job',
  'billing-export': 'job',
  anonymous: 'human',
  // named by their user agent only: the ua: namespace, which no verified identity can share
  'ua:googlebot': 'bot',
  'ua:kube-probe': 'bot',
  'ua:gptbot': 'agent',
  'ua:claudebot': 'agent',
}

t.test('live view of the demo in Chromium', { skip: skipWithoutChromium }, async (t) => {
  const demo = spawnDemo()
  t.teardown(() => demo.kill('SIGKILL'))
  const ui = (await demo.waitFor(/live view\s+(http:\/\/127\.0\.0\.1:\d+\/ui)/, 30_000))[1]!

  const browser = await launchChromium()
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } })
  const pageErrors: string[] = []
  page.on('pageerror', (e) => pageErrors.push(e.message))
  await page.goto(ui)
  await page.waitForSelector('body[data-loaded="true"]', { timeout: 15_000 })

  // every demo identity shows up with its kind
  await page.waitForFunction(
    (names) =>
      names.every((n) => document.querySelector(`#identity-rows tr[data-identity="${CSS.escape(n)}"]`)),
    Object.keys(DEMO_IDENTITIES),
    { timeout: 15_000 },
  )
  for (const [name, kind] of Object.entries(DEMO_IDENTITIES)) {
    const row = page.locator(`#identity-rows tr[data-identity="${name}"]`)
    t.equal(await row.getAttribute('data-kind'), kind, `${name} is shown as ${kind}`)
  }

  // the dependency graph renders with edges into the service this sidecar fronts
  await page.waitForSelector('#graph svg path.edge')
  t.ok(
    (await page.locator('#graph path.edge.external').count()) >= 1,
    'external callers (crawlers, agents) drawn',
  )
  t.ok((await page.locator('#graph .callee').count()) === 1, 'the fronted service is drawn')

  // clicking a live event shows that request's audit record
  const { identity: who } = await openEventAudit(page, 2)
  t.equal(await page.locator('#audit-detail dd[data-field="identity"]').textContent(), who)
  t.match(await page.locator('#audit-detail dd[data-field="trace_id"]').textContent(), /^[0-9a-f]{32}$/)

  // a few samples in the split chart, so the screenshot shows a trend
  await splitChartSamples(page, 3)
  const dir = await scratchDir('ui-demo')
  const shot = join(dir, 'live-view-demo.png')
  await page.screenshot({ path: shot })
  t.ok(existsSync(shot), `screenshot written: ${shot}`)
  t.same(pageErrors, [], 'no script errors on the page')
})
