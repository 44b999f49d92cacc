// From the operator's side, through the built bundle: a key set behind HTTP Basic authentication, named as
// `https://user:password@idp/keys`. The HTTP client drops a URL's userinfo, so the fetch must send it as an
// Authorization header itself (as curl and Go's client do), percent-decoded; the key set would otherwise be
// refused with a 401 that names no cause. `check` refuses a key-set URL that is not http(s), and userinfo next to
// a bearerTokenFile (two credentials for one fetch), naming the line, without quoting the password.
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { createSigningKey, mintToken } from '../helpers/jwks.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const ISSUER = 'https://idp.basic.example'
const USER = 'keys reader'
const PASSWORD = 'p@ss:w/rd%'

t.test('a jwksUri with user:password@ fetches the key set with Basic authentication', async (t) => {
  const key = await createSigningKey('basic-1')
  const seen: (string | undefined)[] = []
  const expected = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`
  const idp = createServer((req, res) => {
    seen.push(req.headers.authorization)
    if (req.headers.authorization !== expected) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="keys"' }).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [key.publicJwk] }))
  })
  idp.listen(0, '127.0.0.1')
  await once(idp, 'listening')
  t.teardown(() => idp.close())
  const port = (idp.address() as AddressInfo).port
  const jwksUri = `http://${encodeURIComponent(USER)}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/keys#k`

  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri, audiences: ['orders'] }] },
  })
  const token = await mintToken(key, {}, { issuer: ISSUER, audience: 'orders', subject: 'basic-caller' })
  const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
  const headers = JSON.parse(await res.body.text()).headers as Record<string, string>
  t.equal(headers['x-nhi-verified'], 'true', 'the token verifies against the key set fetched with Basic auth')
  t.ok(seen.length > 0, 'the key set was fetched')
  t.same(new Set(seen), new Set([expected]), 'every fetch carried the percent-decoded user and password')
  const logs = sidecar.process.stdout() + sidecar.process.stderr()
  t.notOk(
    logs.includes(PASSWORD) || logs.includes(encodeURIComponent(PASSWORD)),
    'the password is never logged',
  )
})

t.test(
  'check: a key-set URL that is not http(s), or userinfo beside a bearerTokenFile, is refused',
  async (t) => {
    const dir = await scratchDir('jwks-userinfo')
    const tokenFile = join(dir, 'token')
    await writeFile(tokenFile, 'cluster-token\n')
    const cases = [
      {
        name: 'ftp',
        yaml: `jwt:\n  issuers:\n    - issuer: ${ISSUER}\n      jwksUri: ftp://idp.example/keys\n      audiences: any\n`,
        message: /:4:16 jwt\.issuers\[0\]\.jwksUri: expected an http\(s\) URL/,
      },
      {
        name: 'file',
        yaml: `jwt:\n  issuers:\n    - issuer: ${ISSUER}\n      jwksUri: file:///etc/keys.json\n      audiences: any\n`,
        message: /:4:16 jwt\.issuers\[0\]\.jwksUri: expected an http\(s\) URL/,
      },
      {
        name: 'ranges',
        yaml: 'bots:\n  verify:\n    ranges:\n      - operator: google\n        url: file:///tmp/r.json\n',
        message: /:5:14 bots\.verify\.ranges\[0\]\.url: expected an http\(s\) URL/,
      },
      {
        name: 'two credentials',
        yaml: `jwt:\n  issuers:\n    - issuer: ${ISSUER}\n      jwksUri: https://reader:${encodeURIComponent(PASSWORD)}@idp.example/keys\n      bearerTokenFile: ${tokenFile}\n      audiences: any\n`,
        message: /:4:16 .*two credentials for its key set/,
      },
    ]
    for (const c of cases) {
      const file = join(dir, `${c.name.replace(/ /g, '-')}.yaml`)
      await writeFile(file, c.yaml)
      const out = await runCli(['check', file])
      t.equal(out.code, 1, `${c.name}: refused`)
      t.match(out.stdout + out.stderr, c.message, `${c.name}: names the line and what is wrong`)
      t.notOk(
        (out.stdout + out.stderr).includes(encodeURIComponent(PASSWORD)),
        `${c.name}: no password quoted`,
      )
    }
    const ok = join(dir, 'ok.yaml')
    await writeFile(
      ok,
      `jwt:\n  issuers:\n    - issuer: ${ISSUER}\n      jwksUri: HTTPS://reader:x@idp.example/keys\n      audiences: any\n`,
    )
    const accepted = await runCli(['check', ok])
    t.equal(
      accepted.code,
      0,
      `an upper-case scheme and userinfo alone are accepted: ${accepted.stdout}${accepted.stderr}`,
    )
  },
)
