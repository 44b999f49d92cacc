// A rule that reads a request header (`header: { x-tenant: '{t}' }`, a literal `région-*`, a user-agent pattern)
// reads the header's bytes as UTF-8, as the client wrote them and as Envoy's byte-wise match of a UTF-8 pattern
// reads them: Node hands the bytes C3 A9 over as the two characters `Ã©`, so `région` neither matched the
// pattern written as `région` nor was it captured as `région`. Over HTTP/1.1 and HTTP/2, and `explain -H` (text
// already) gives the same identity. Bytes that are not UTF-8 stay what they were.
import { connect } from 'node:http2'
import t from 'tap'
import { rawExchange } from '../helpers/net.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** a string whose characters are the UTF-8 bytes of `text`, as Node hands a header over */
const asHeaderBytes = (text: string) => Buffer.from(text, 'utf8').toString('latin1')

t.test('header patterns and captures read UTF-8 header bytes as the text they encode', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    audit: { output: 'off', ringSize: 100 },
    identities: [
      { name: 'north', kind: 'service', match: { header: { 'x-region': 'région-nord' } } },
      { name: 'tenant/{t}', kind: 'service', match: { header: { 'x-tenant': '{t}' } } },
      { name: 'reader/{v}', kind: 'bot', match: { userAgent: 'Bücherwurm/{v}' } },
    ],
  })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const identityOverH1 = async (name: string, value: Buffer) => {
    const head = Buffer.concat([
      Buffer.from(`GET /echo HTTP/1.1\r\nHost: app\r\nConnection: close\r\n${name}: `),
      value,
      Buffer.from('\r\n\r\n'),
    ])
    const answer = await rawExchange(port, head)
    t.match(answer, /^HTTP\/1\.1 200 /, `${name}: forwarded`)
    const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as {
      headers: Record<string, string>
    }
    // an unverified name reaches the upstream marked `ua:`, as the client's word
    return decodeURIComponent(body.headers['x-nhi-identity']!).replace(/^ua:/, '')
  }
  t.equal(
    await identityOverH1('x-region', Buffer.from('région-nord')),
    'north',
    'a literal UTF-8 pattern matches',
  )
  t.equal(
    await identityOverH1('x-tenant', Buffer.from('café-zürich')),
    'tenant/café-zürich',
    'captured as text',
  )
  t.equal(
    await identityOverH1('user-agent', Buffer.from('Bücherwurm/2.1')),
    'reader/2.1',
    'a user-agent pattern too',
  )
  // `ua:tenant/x` and 122 emoji are 255 UTF-16 units: a cut at 256 would keep half of the 123rd
  const astral = await identityOverH1('x-tenant', Buffer.from(`x${'\u{1F600}'.repeat(200)}`))
  t.equal(
    astral,
    `tenant/x${'\u{1F600}'.repeat(122)}`,
    'a long name is cut between characters, never inside one',
  )
  t.equal(
    await identityOverH1('x-tenant', Buffer.from([0x63, 0x61, 0x66, 0xe9])),
    'tenant/café',
    'a latin1 byte that is not UTF-8 stays the character it was',
  )

  const session = connect(sidecar.proxyUrl)
  t.teardown(() => session.close())
  const identityOverH2 = (name: string, value: string) =>
    new Promise<string>((resolve, reject) => {
      const stream = session.request({ ':path': '/echo', [name]: asHeaderBytes(value) })
      let body = ''
      stream.setEncoding('utf8')
      stream.on('data', (c: string) => {
        body += c
      })
      stream.on('end', () => {
        const headers = (JSON.parse(body) as { headers: Record<string, string> }).headers
        resolve(decodeURIComponent(headers['x-nhi-identity']!).replace(/^ua:/, ''))
      })
      stream.on('error', reject)
    })
  t.equal(await identityOverH2('x-region', 'région-nord'), 'north', 'HTTP/2: the literal pattern matches')
  t.equal(await identityOverH2('x-tenant', 'café-zürich'), 'tenant/café-zürich', 'HTTP/2: captured as text')

  const audit = await (await fetch(`${sidecar.adminUrl}/audit?limit=100`)).text()
  t.match(audit, /"identity":"ua:tenant\/café-zürich"/, 'the audit trail names the same identity')
  t.notMatch(audit, /Ã/, 'no UTF-8 read as latin1 anywhere in the audit')

  const explained = await runCli([
    'explain',
    '-c',
    sidecar.configPath,
    '-H',
    'X-Tenant: café-zürich',
    '--json',
  ])
  t.equal(explained.code, 0, explained.stderr)
  t.equal(
    JSON.parse(explained.stdout).identity.name,
    'ua:tenant/café-zürich',
    'explain -H agrees with the proxy',
  )
})
