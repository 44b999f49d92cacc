// The live view shows what clients chose (identity names, paths, user agents), escaped by the page's script.
// Its Content-Security-Policy is the backstop should an escape ever be missed: with script-src
// 'unsafe-inline' any event-handler attribute that got into the markup (`<img src=x onerror=…>`) ran in the
// admin's origin. The page's one script is allowed by its hash instead.
import { createHash } from 'node:crypto'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'

t.test('/ui: script-src allows the page script by its hash, never inline script at large', async (t) => {
  const telemetry = new Telemetry(configSchema.parse({ service: 'shop', audit: { output: 'off' } }), {
    version: 'test',
  })
  const url = await startAdmin(t, telemetry)
  const res = await fetch(`${url}/ui`)
  t.equal(res.status, 200)
  const page = await res.text()
  const scripts = [...page.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]!)
  t.equal(scripts.length, 1, 'one inline script')
  const csp = res.headers.get('content-security-policy') ?? ''
  const directives = new Map(
    csp.split(';').map((d) => {
      const [name = '', ...values] = d.trim().split(/\s+/)
      return [name, values] as const
    }),
  )
  const scriptSrc = directives.get('script-src') ?? []
  t.notOk(scriptSrc.includes("'unsafe-inline'"), `no 'unsafe-inline' in script-src (${scriptSrc.join(' ')})`)
  const hash = createHash('sha256').update(scripts[0]!).digest('base64')
  t.ok(scriptSrc.includes(`'sha256-${hash}'`), 'the page script allowed by its hash')
  t.same(directives.get('object-src'), ["'none'"], 'no plugins')
  t.same(directives.get('base-uri'), ["'none'"], 'no <base> redirecting the page')
})
