// Policy rules keyed on a method (`methods: [DELETE]`) are decided on the request line's method only, but the
// common upstream frameworks take the method from a header on a POST: Symfony and Laravel
// (Request::getMethod reads X-HTTP-Method-Override on every POST), Express `method-override`,
// Rack::MethodOverride (HTTP_X_HTTP_METHOD_OVERRIDE, so X_HTTP_Method_Override too), ASP.NET Core
// UseHttpMethodOverride, OData's X-HTTP-Method. A caller the policy refuses a DELETE then gets the DELETE
// run by sending it as a POST with the header. The upstream here resolves the method the way those
// frameworks do and records what it executed.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** the method a Symfony/Laravel/Express(method-override)/Rack upstream dispatches on */
function frameworkMethod(
  method: string,
  headers: Record<string, string | string[] | undefined>,
  url = '/',
): string {
  if (method !== 'POST') return method
  for (const [name, value] of Object.entries(headers)) {
    const n = name.toLowerCase().replaceAll('_', '-')
    if ((n === 'x-http-method-override' || n === 'x-http-method' || n === 'x-method-override') && value)
      return String(value).split(',')[0]!.trim().toUpperCase()
  }
  // Laravel and Symfony (method parameter override on) read the query as PHP parses it: names decoded,
  // cut at the first NUL, "." and " " turned into "_"; Express's methodOverride('_method') reads
  // req.query._method
  const query = url.includes('?') ? url.slice(url.indexOf('?') + 1) : ''
  for (const pair of query.split('&')) {
    const [name = '', value = ''] = pair.split('=')
    const key = decodeURIComponent(name.replaceAll('+', ' '))
      .split('\0')[0]!
      .trimStart()
      .replace(/[. ]/g, '_')
    if (key === '_method' && value) return decodeURIComponent(value).trim().toUpperCase()
  }
  return method
}

t.test('a POST carrying a method-override header is decided as the method the upstream runs', async (t) => {
  const executed: string[] = []
  const upstream = createServer((req, res) => {
    executed.push(`${frameworkMethod(req.method ?? '', req.headers, req.url)} ${req.url}`)
    req.resume()
    req.on('end', () => res.end('done'))
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
    policy: {
      mode: 'enforce',
      rules: [{ route: '/orders/**', methods: ['DELETE'], allow: [{ identity: 'orders-admin' }] }],
    },
  })
  const send = (method: string, headers: Record<string, string> = {}, query = '') =>
    request(`${sidecar.proxyUrl}/orders/42${query}`, { method: method as 'POST', headers, body: '' }).then(
      async (r) => {
        await r.body.text()
        return r.statusCode
      },
    )

  // control: the policy refuses an anonymous DELETE
  t.equal(await send('DELETE'), 403, 'control: DELETE /orders/42 is refused')
  t.same(executed, [], 'control: nothing executed')

  for (const header of ['X-HTTP-Method-Override', 'X-HTTP-Method', 'X_HTTP_Method_Override']) {
    const status = await send('POST', { [header]: 'DELETE' })
    t.same(
      executed.filter((e) => e.startsWith('DELETE')),
      [],
      `POST + ${header}: DELETE did not make the upstream run a DELETE the policy refuses (status ${status})`,
    )
    executed.length = 0
  }

  for (const query of [
    '?_method=DELETE',
    '?a=1&_method=delete',
    '?_m%65thod=DELETE',
    '?.method=DELETE',
    // PHP cuts a name at its first NUL: both are its $_GET['_method']
    '?_method%00=DELETE',
    '?_method%00x=DELETE',
  ]) {
    const status = await send('POST', {}, query)
    t.same(
      executed.filter((e) => e.startsWith('DELETE')),
      [],
      `POST ${query}: DELETE did not make the upstream run a DELETE the policy refuses (status ${status})`,
    )
    executed.length = 0
  }
  t.equal(await send('POST', {}, '?_method=PATCH&method=DELETE'), 200, 'another method the policy allows')
  executed.length = 0

  // a plain POST is not affected
  t.equal(await send('POST'), 200, 'a POST without an override is forwarded')
  t.same(executed, ['POST /orders/42'])
})
