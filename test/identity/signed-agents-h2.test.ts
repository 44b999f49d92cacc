// docs/reference.md "HTTP/2 and gRPC": identity works per HTTP/2 stream exactly as per HTTP/1.1 request. An
// HTTP/2 request names its host in :authority (RFC 9113 §8.3.1; clients send no Host): the Web Bot Auth check
// reads it as the host a signature covers, so a correctly signed agent over h2c is verified as over HTTP/1.1,
// and signedAgents.authorities holds for the :authority as for Host.
import { once } from 'node:events'
import { type ClientHttp2Session, connect, type OutgoingHttpHeaders } from 'node:http2'
import t from 'tap'
import { request } from 'undici'
import { signRequest, startSignedAgentSidecar } from '../helpers/signed-agent.ts'

/** a GET of /echo over `session`: the request headers the upstream echoed */
async function echoedOverH2(session: ClientHttp2Session, headers: OutgoingHttpHeaders) {
  const stream = session.request({ ':path': '/echo', 'user-agent': 'ExampleAgent/1.0', ...headers })
  let body = ''
  stream.setEncoding('utf8')
  stream.on('data', (c: string) => {
    body += c
  })
  await once(stream, 'end')
  return JSON.parse(body).headers as Record<string, string>
}

t.test('a signed agent is verified over HTTP/2 as over HTTP/1.1', async (t) => {
  const { key, directory, sidecar } = await startSignedAgentSidecar(t)
  const proxy = `http://127.0.0.1:${sidecar.proxyAddress.port}`
  const agent = JSON.stringify(directory.origin)

  // control: HTTP/1.1
  const h1 = await request(`${proxy}/echo`, {
    headers: { 'user-agent': 'ExampleAgent/1.0', ...(await signRequest(key, `${proxy}/echo`, { agent })) },
  })
  const h1seen = JSON.parse(await h1.body.text()).headers as Record<string, string>
  t.equal(h1seen['x-nhi-identity'], 'agent.example', 'control: verified over HTTP/1.1')

  const session = connect(proxy)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const seen = await echoedOverH2(session, await signRequest(key, `${proxy}/echo`, { agent }))
  t.equal(seen['x-nhi-identity'], 'agent.example', 'verified over h2c')
  t.equal(seen['x-nhi-source'], 'signature')
  t.equal(seen['x-nhi-verified'], 'true')
})

t.test('signedAgents.authorities holds for the HTTP/2 :authority', async (t) => {
  const { key, directory, sidecar } = await startSignedAgentSidecar(t, { authorities: ['shop.example'] })
  const session = connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const agent = JSON.stringify(directory.origin)
  const get = async (authority: string) => {
    const signed = await signRequest(key, `http://${authority}/echo`, { agent })
    const seen = await echoedOverH2(session, { ':authority': authority, ...signed })
    return { identity: seen['x-nhi-identity'], verified: seen['x-nhi-verified'] }
  }
  t.same(await get('shop.example'), { identity: 'agent.example', verified: 'true' }, 'a listed :authority')
  t.same(
    await get('evil.test'),
    { identity: 'ua:exampleagent', verified: 'false' },
    'a signature made for evil.test, sent with :authority evil.test, is refused',
  )
})
