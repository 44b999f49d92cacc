// The signature verifier on its own, against a key directory served over HTTP and requests signed with the
// web-bot-auth package: the edges the end-to-end suite does not reach (future created, never-fetched
// directory, signatures that are not Web Bot Auth, malformed headers, Signature-Agent forms, a directory whose
// server hangs).
import { createPrivateKey } from 'node:crypto'
import t from 'tap'
import { defaultConfig } from '../../src/config/schema.ts'
import { loadHms, namedDirectories, SignatureVerifier } from '../../src/identity/signatures/verifier.ts'
import type { ConnectionInfo, RequestInfo } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import { createAgentKey, signRequest, signWithParams, startKeyDirectory } from '../helpers/signed-agent.ts'

const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }
const HOST = 'shop.test'

function verifierFor(urls: string[], overrides: Record<string, unknown> = {}): SignatureVerifier {
  const cfg = {
    ...defaultConfig().signedAgents,
    directories: urls.map((url) => ({ url, kind: 'agent' as const })),
    ...overrides,
  }
  const v = new SignatureVerifier(cfg, { fetchTimeoutMs: 1000, unknownKeyCooldownMs: 0 })
  t.teardown(() => v.close())
  return v
}

function req(headers: Record<string, string>): RequestInfo {
  return { method: 'GET', path: '/docs', url: '/docs', headers: { host: HOST, ...headers } }
}

t.test('a signature created in the future is not yet valid', async (t) => {
  const key = await createAgentKey()
  const dir = await startKeyDirectory([key])
  t.teardown(() => dir.close())
  const v = verifierFor([dir.url])
  await v.start()
  const ok = await v.verify(req(await signRequest(key, `http://${HOST}/docs`)), conn)
  t.match(ok, { source: 'signature', verified: true, name: '127.0.0.1', kind: 'agent', keyid: key.keyid })
  const future = await signRequest(key, `http://${HOST}/docs`, { created: Date.now() + 10 * 60_000 })
  t.match(await v.verify(req(future), conn), { failed: true, reason: 'not_yet_valid' })
  const withinSkew = await signRequest(key, `http://${HOST}/docs`, { created: Date.now() + 5_000 })
  t.match(await v.verify(req(withinSkew), conn), { verified: true }, 'a few seconds ahead is clock skew')
})

t.test('a directory that was never fetched: keys_unavailable, then verified once it answers', async (t) => {
  const key = await createAgentKey()
  const dir = await startKeyDirectory([key])
  t.teardown(() => dir.close())
  dir.fault = 503
  const v = verifierFor([dir.url])
  await v.start()
  const first = await v.verify(req(await signRequest(key, `http://${HOST}/docs`)), conn)
  t.match(first, { failed: true, reason: 'keys_unavailable' })
  dir.fault = undefined
  const second = await v.verify(req(await signRequest(key, `http://${HOST}/docs`)), conn)
  t.match(second, { verified: true }, 'an unknown keyid refetches the directory')
})

t.test(
  'what is not a Web Bot Auth signature is left alone; malformed headers fail, never throw',
  async (t) => {
    const key = await createAgentKey()
    const dir = await startKeyDirectory([key])
    t.teardown(() => dir.close())
    const v = verifierFor([dir.url])
    await v.start()
    t.equal(v.extract(req({}), conn), undefined, 'no signature headers: nothing to verify')
    const signed = await signRequest(key, `http://${HOST}/docs`)
    const otherTag = signed['signature-input']!.replace('tag="web-bot-auth"', 'tag="payments"')
    t.equal(await v.verify(req({ ...signed, 'signature-input': otherTag }), conn), undefined)
    // Signature-Agent belongs to Web Bot Auth: beside another tag's signature it fails nothing either
    for (const agent of ['"https://elsewhere.example"', 'sig1=123']) {
      const headers = { ...signed, 'signature-input': otherTag, 'signature-agent': agent }
      t.equal(await v.verify(req(headers), conn), undefined, `another tag with Signature-Agent: ${agent}`)
    }
    t.match(
      await v.verify(req({ ...signed, 'signature-agent': '"https://elsewhere.example"' }), conn),
      { failed: true, reason: 'signature_unknown_key' },
      'a Web Bot Auth label naming a directory that is not configured',
    )
    // without Signature-Input it is not an RFC 9421 signature: the draft-cavage format ActivityPub servers send
    t.equal(v.extract(req({ signature: signed['signature']! }), conn), undefined, 'only Signature: not ours')
    t.equal(await v.verify(req({ signature: signed['signature']! }), conn), undefined, 'only Signature')
    for (const [what, headers] of [
      ['only Signature-Input, tagged web-bot-auth', { 'signature-input': signed['signature-input']! }],
      ['junk Signature-Input', { ...signed, 'signature-input': 'sig1=(((' }],
      ['junk Signature', { ...signed, signature: 'sig1=:not base64!:' }],
      ['another label', { ...signed, signature: signed['signature']!.replace('sig1=', 'sig2=') }],
      ['Signature-Agent not a string', { ...signed, 'signature-agent': 'sig1=123' }],
    ] as const) {
      const r = await v.verify(req(headers), conn)
      t.match(r, { failed: true, source: 'signature' }, what)
    }
    const longNonce = await signRequest(key, `http://${HOST}/docs`)
    const withLongNonce = longNonce['signature-input']!.replace(/nonce="[^"]*"/, `nonce="${'a'.repeat(300)}"`)
    t.match(
      await v.verify(req({ ...longNonce, 'signature-input': withLongNonce }), conn),
      { failed: true, reason: 'signature_invalid' },
      'an oversized nonce is refused before the signature is checked',
    )
    const noHost = { method: 'GET', path: '/', url: '/', headers: { ...signed } }
    t.match(await v.verify(noHost, conn), { failed: true, reason: 'signature_invalid' }, 'no Host')
  },
)

t.test('Signature-Agent names a configured directory by origin or by exact URL', async (t) => {
  const v = verifierFor([
    'https://agent.example/.well-known/http-message-signatures-directory',
    'https://keys.example/agents/a.json',
  ])
  const names = (h: string) => {
    const r = namedDirectories(h, v.directories)
    return r === 'malformed' ? r : r.map((d) => d.name)
  }
  t.same(names('"https://agent.example"'), ['agent.example'], 'sf-string origin')
  t.same(names('sig1="https://agent.example/"'), ['agent.example'], 'dictionary member')
  t.same(names('https://agent.example'), ['agent.example'], 'bare URL')
  t.same(names('"https://keys.example/agents/a.json"'), ['keys.example'], 'exact directory URL')
  t.same(names('"https://keys.example"'), [], 'an origin names only its well-known directory')
  t.same(names('"https://agent.example.evil.test"'), [], 'look-alike host')
  t.same(names('"http://agent.example"'), [], 'another scheme is another origin')
  t.equal(names('"not a url"'), 'malformed')
  t.equal(names(`"https://agent.example/${'a'.repeat(5000)}"`), 'malformed', 'bounded length')
})

t.test('signedAgents.requireNonce refuses a signature without a nonce', async (t) => {
  const key = await createAgentKey()
  const dir = await startKeyDirectory([key])
  t.teardown(() => dir.close())
  const lib = await loadHms()
  const privateKey = createPrivateKey({ key: key.privateJwk, format: 'jwk' })
  const now = new Date()
  // signed by the RFC 9421 library directly: the web-bot-auth signer always adds a nonce
  const signed = await lib.httpbis.signMessage(
    {
      key: lib.createSigner(privateKey, 'ed25519', key.keyid),
      name: 'sig1',
      fields: ['@authority'],
      params: ['created', 'expires', 'keyid', 'alg', 'tag'],
      paramValues: { created: now, expires: new Date(now.getTime() + 60_000), tag: 'web-bot-auth' },
    },
    { method: 'GET', url: `http://${HOST}/docs`, headers: {} },
  )
  // as Node hands them over: lower-cased names
  const headers = Object.fromEntries(
    Object.entries(signed.headers as Record<string, string>).map(([k, v]) => [k.toLowerCase(), v]),
  )
  const lenient = verifierFor([dir.url])
  await lenient.start()
  t.match(await lenient.verify(req(headers), conn), { verified: true }, 'accepted by default')
  const strict = verifierFor([dir.url], { requireNonce: true })
  await strict.start()
  t.match(await strict.verify(req(headers), conn), { failed: true, reason: 'signature_invalid' })
})

// Without Signature-Agent every directory is searched for the keyid, and one that lacks it is refetched. Any
// client can send a keyid no directory has: while the refetch of a directory whose server hangs is under
// way, the signatures of another directory must not wait for it.
t.test("a directory whose server hangs holds up no other directory's signatures", async (t) => {
  const [keyA, keyB, newKeyB] = await Promise.all([createAgentKey(), createAgentKey(), createAgentKey()])
  const [dirA, dirB] = await Promise.all([startKeyDirectory([keyA]), startKeyDirectory([keyB])])
  t.teardown(() => dirA.close())
  t.teardown(() => dirB.close())
  /** refetches of directory A that ended without an answer (its fetch timeout) */
  let aGaveUp = 0
  const v = new SignatureVerifier(
    {
      ...defaultConfig().signedAgents,
      directories: [
        { url: dirA.url, name: 'agent-a', kind: 'agent' },
        { url: dirB.url, name: 'agent-b', kind: 'agent' },
      ],
    },
    {
      fetchTimeoutMs: 5000,
      unknownKeyCooldownMs: 0,
      observer: {
        refreshed: (issuer, result) => {
          if (issuer === dirA.url && result === 'failure') aGaveUp++
        },
      },
    },
  )
  t.teardown(() => v.close())
  await v.start()
  const url = `http://${HOST}/docs`
  dirA.hang = true
  const now = Math.floor(Date.now() / 1000)
  const madeUp = v.verify(
    req(signWithParams(keyA, url, `;created=${now};expires=${now + 60};keyid="made-up";tag="web-bot-auth"`)),
    conn,
  )
  await eventually(() => dirA.hanging === 1, { what: "the made-up keyid's refetch of directory A" })

  t.match(await v.verify(req(await signRequest(keyB, url)), conn), { verified: true, name: 'agent-b' })
  t.same([aGaveUp, dirA.hanging], [0, 1], "a key directory B has: verified while A's refetch still hangs")
  dirB.keys.push(newKeyB)
  t.match(await v.verify(req(await signRequest(newKeyB, url)), conn), { verified: true, name: 'agent-b' })
  t.same(
    [aGaveUp, dirA.hanging],
    [0, 1],
    "a key B has once refetched: verified while A's refetch still hangs",
  )

  await dirA.close()
  t.match(await madeUp, { failed: true, reason: 'signature_unknown_key' })
})
