// Every admin answer says what it is and forbids content sniffing: the JSON and the event stream carry what
// clients sent (identity names, paths), which a browser must never take for a page of the admin's origin.
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.test('admin answers: content type and X-Content-Type-Options: nosniff', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, { upstream: upstream.url })
  const cases: [string, string, RegExp][] = [
    ['GET', '/identities', /^application\/json; charset=utf-8$/],
    ['GET', '/audit', /^application\/json; charset=utf-8$/],
    ['GET', '/config', /^application\/json; charset=utf-8$/],
    ['GET', '/healthz', /^application\/json; charset=utf-8$/],
    ['GET', '/readyz', /^application\/json; charset=utf-8$/],
    ['GET', '/nowhere', /^application\/json; charset=utf-8$/],
    ['POST', '/identities', /^application\/json; charset=utf-8$/],
    ['GET', '/ui', /^text\/html; charset=utf-8$/],
    ['GET', '/metrics', /^text\/plain; version=0.0.4; charset=utf-8$/],
    ['GET', '/events', /^text\/event-stream; charset=utf-8$/],
  ]
  for (const [method, path, type] of cases) {
    const ac = new AbortController()
    const res = await fetch(`${sidecar.adminUrl}${path}`, { method, signal: ac.signal })
    t.match(res.headers.get('content-type'), type, `${method} ${path}: content type`)
    t.equal(res.headers.get('x-content-type-options'), 'nosniff', `${method} ${path}: nosniff`)
    // the event stream never ends by itself
    ac.abort()
  }
})
