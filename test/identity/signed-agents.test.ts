// Signed agents through the built proxy: requests signed per Web Bot Auth (RFC 9421 message signatures) with
// the web-bot-auth package's signer, verified against a key directory served over HTTP. Verified, tampered,
// expired, replayed, unknown key, unconfigured directory, a directory that goes down (last good keys), a
// signature made for another site (signedAgents.authorities), and a nonce cache too small for the traffic.
import { createHash, createPrivateKey } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSigner, httpbis } from 'http-message-signatures'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { rawExchange } from '../helpers/net.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import {
  createAgentKey,
  signRequest,
  signWithParams,
  startKeyDirectory,
  startSignedAgentSidecar,
} from '../helpers/signed-agent.ts'
import { startUpstream } from '../helpers/upstream.ts'

// the tests share nothing (each its own sidecar, upstream and key directory) and the last spends most of its
// time waiting for nonces to expire: run side by side
t.jobs = 4

interface Seen {
  identity: string | undefined
  source: string | undefined
  verified: string | undefined
  audit: Record<string, unknown>
}

t.test('Web Bot Auth signatures are verified against the configured key directory', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createAgentKey()
  const stranger = await createAgentKey()
  const directory = await startKeyDirectory([key])
  t.teardown(() => directory.close())
  const other = await startKeyDirectory([stranger])
  t.teardown(() => other.close())
  const sidecar = await startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    signedAgents: {
      directories: [
        {
          url: directory.url,
          name: 'agent.example',
          operator: 'Example AI',
          purpose: 'assistant',
          refreshInterval: '1s',
        },
      ],
    },
  })
  const authority = `127.0.0.1:${sidecar.proxyAddress.port}`
  const proxy = `http://${authority}`
  const admin = sidecar.adminUrl
  const agent = JSON.stringify(directory.origin)
  let n = 0

  const send = async (headers: Record<string, string>): Promise<Seen> => {
    const requestId = `signed-${++n}`
    const res = await request(`${proxy}/echo`, {
      headers: { 'user-agent': 'ExampleAgent/1.0', 'x-request-id': requestId, ...headers },
    })
    const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
    const audit = await eventually(async () => {
      const r = await request(`${admin}/audit?request_id=${requestId}`)
      const events = (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events
      return events[0]
    })
    return {
      identity: echoed['x-nhi-identity'],
      source: echoed['x-nhi-source'],
      verified: echoed['x-nhi-verified'],
      audit,
    }
  }
  const reasons = (seen: Seen) =>
    (seen.audit['failures'] as { source: string; reason: string }[])
      .filter((f) => f.source === 'signature')
      .map((f) => f.reason)

  await t.test('a valid signature is a verified agent named after its directory', async (t) => {
    const seen = await send(await signRequest(key, `${proxy}/echo`, { agent }))
    t.equal(seen.identity, 'agent.example')
    t.equal(seen.source, 'signature')
    t.equal(seen.verified, 'true')
    t.match(seen.audit, {
      kind: 'agent',
      rule: 'builtin:signature',
      agent_operator: 'Example AI',
      agent_purpose: 'assistant',
      signature_agent: directory.url,
      failures: [],
    })
  })

  await t.test('without Signature-Agent, the configured directories are searched by keyid', async (t) => {
    const seen = await send(await signRequest(key, `${proxy}/echo`))
    t.equal(seen.identity, 'agent.example')
    t.equal(seen.verified, 'true')
  })

  await t.test('a header changed after signing does not verify', async (t) => {
    const signed = await signRequest(key, `${proxy}/echo`, { agent })
    // the signature covers @authority: the same request addressed to another host name is not what was signed
    const seen = await send({ ...signed, host: `localhost:${sidecar.proxyAddress.port}` })
    t.equal(seen.verified, 'false')
    t.equal(seen.source, 'useragent', 'falls back to what the user agent says')
    t.same(reasons(seen), ['signature_invalid'])
    const agentChanged = await send({ ...signed, 'signature-agent': `"${directory.origin}/"` })
    t.equal(agentChanged.verified, 'false')
    t.same(reasons(agentChanged), ['signature_invalid'], 'Signature-Agent is covered too')
  })

  await t.test(
    'a draft-cavage Signature without Signature-Input (ActivityPub) is left to the service',
    async (t) => {
      const invalid = async () =>
        metricValue(await scrape(admin), 'nhi_auth_failures_total', {
          source: 'signature',
          reason: 'signature_invalid',
        })
      const before = await invalid()
      // what Mastodon sends with every inbox delivery (signature value shortened: nothing checks it here)
      const body = JSON.stringify({ type: 'Follow', actor: 'https://m.example/users/a' })
      const signature =
        'keyId="https://m.example/users/a#main-key",algorithm="rsa-sha256",' +
        'headers="(request-target) host date digest",' +
        `signature="${Buffer.alloc(256, 7).toString('base64')}"`
      const requestId = `cavage-${++n}`
      const res = await request(`${proxy}/echo`, {
        method: 'POST',
        body,
        headers: {
          'user-agent': 'http.rb/5.1.1 (Mastodon/4.2.0; +https://m.example/)',
          'content-type': 'application/activity+json',
          date: new Date().toUTCString(),
          digest: `SHA-256=${createHash('sha256').update(body).digest('base64')}`,
          signature,
          'x-request-id': requestId,
        },
      })
      const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
      t.equal(res.statusCode, 200)
      t.equal(echoed['signature'], signature, 'the service gets its signature to check')
      t.equal(echoed['x-nhi-verified'], 'false')
      t.not(echoed['x-nhi-source'], 'signature')
      const audit = await eventually(async () => {
        const r = await request(`${admin}/audit?request_id=${requestId}`)
        return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
      })
      t.same(audit['failures'], [], 'no failure recorded')
      t.equal(await invalid(), before, 'no signature_invalid counted')
    },
  )

  await t.test('a Web Bot Auth Signature-Input without its Signature is still a failure', async (t) => {
    const signed = await signRequest(key, `${proxy}/echo`, { agent })
    const seen = await send({ 'signature-input': signed['signature-input']!, 'signature-agent': agent })
    t.equal(seen.verified, 'false')
    t.same(reasons(seen), ['signature_invalid'])
  })

  await t.test('an expired signature is refused', async (t) => {
    const signed = await signRequest(key, `${proxy}/echo`, {
      agent,
      created: Date.now() - 10 * 60_000,
      lifetimeMs: 5 * 60_000,
    })
    const seen = await send(signed)
    t.equal(seen.verified, 'false')
    t.same(reasons(seen), ['signature_expired'])
  })

  await t.test('a signature with a long lifetime expires after signedAgents.maxAge', async (t) => {
    const signed = await signRequest(key, `${proxy}/echo`, {
      agent,
      created: Date.now() - 10 * 60_000,
      lifetimeMs: 60 * 60_000,
    })
    t.same(reasons(await send(signed)), ['signature_expired'])
  })

  await t.test('created and expires must be integers: maxAge holds whatever else they say', async (t) => {
    const now = Math.floor(Date.now() / 1000)
    const params = (created: string) =>
      `;created=${created};expires=${now + 365 * 86_400};keyid="${key.keyid}";tag="web-bot-auth"`
    const control = await send(signWithParams(key, `${proxy}/echo`, params(String(now))))
    t.equal(control.verified, 'true', 'control: the same signature with an integer created verifies')
    for (const created of ['"now"', `${now}.5`]) {
      const seen = await send(signWithParams(key, `${proxy}/echo`, params(created)))
      t.equal(seen.verified, 'false', `created=${created}`)
      t.same(reasons(seen), ['signature_invalid'], `created=${created}`)
    }
    const decimalExpires = `;created=${now};expires=${now + 60}.5;keyid="${key.keyid}";tag="web-bot-auth"`
    t.same(reasons(await send(signWithParams(key, `${proxy}/echo`, decimalExpires))), ['signature_invalid'])
  })

  await t.test(
    'a request carrying more than four Web Bot Auth signatures is refused unchecked',
    async (t) => {
      const now = Math.floor(Date.now() / 1000)
      const good = signWithParams(
        key,
        `${proxy}/echo`,
        `;created=${now};expires=${now + 60};keyid="${key.keyid}";tag="web-bot-auth"`,
      )
      // the same valid signature under n labels (a label is not covered by its signature)
      const labelled = (n: number) => {
        const names = Array.from({ length: n }, (_, i) => `sig${i + 1}=`)
        return {
          'signature-input': names.map((l) => good['signature-input']!.replace('sig1=', l)).join(', '),
          signature: names.map((l) => good['signature']!.replace('sig1=', l)).join(', '),
        }
      }
      const four = await send(labelled(4))
      t.equal(four.verified, 'true', 'control: four are checked')
      const five = await send(labelled(5))
      t.equal(five.verified, 'false', 'five are refused, valid as they are')
      t.same(reasons(five), ['signature_invalid'])
    },
  )

  await t.test('a replayed nonce is refused', async (t) => {
    const signed = await signRequest(key, `${proxy}/echo`, { agent })
    const first = await send(signed)
    t.equal(first.verified, 'true', 'first use verifies')
    const second = await send(signed)
    t.equal(second.verified, 'false', 'the same signature again does not')
    t.same(reasons(second), ['signature_replayed'])
  })

  await t.test('a key the directory does not publish is unknown', async (t) => {
    const seen = await send(await signRequest(stranger, `${proxy}/echo`, { agent }))
    t.equal(seen.verified, 'false')
    t.same(reasons(seen), ['signature_unknown_key'])
  })

  await t.test('a directory that is not configured is never fetched', async (t) => {
    const hits = other.hits
    const seen = await send(
      await signRequest(stranger, `${proxy}/echo`, { agent: JSON.stringify(other.origin) }),
    )
    t.equal(seen.verified, 'false')
    t.same(reasons(seen), ['signature_unknown_key'])
    t.equal(other.hits, hits, 'the named directory was not contacted')
  })

  await t.test('the directory goes down: the last good keys keep verifying', async (t) => {
    const refreshes = async (result: string) =>
      metricValue(await scrape(admin), 'nhi_jwks_refresh_total', { issuer: directory.url, result })
    t.ok(await refreshes('success'), 'directory fetches are counted as key-set refreshes')
    const before = await refreshes('failure')
    directory.fault = 503
    await eventually(async () => (await refreshes('failure')) > before, { what: 'a failed refresh' })
    const seen = await send(await signRequest(key, `${proxy}/echo`, { agent }))
    t.equal(seen.identity, 'agent.example')
    t.equal(seen.verified, 'true')
    directory.fault = undefined
  })

  await t.test('failures are counted per reason', async (t) => {
    const m = await scrape(admin)
    for (const reason of [
      'signature_invalid',
      'signature_expired',
      'signature_replayed',
      'signature_unknown_key',
    ])
      t.ok(metricValue(m, 'nhi_auth_failures_total', { source: 'signature', reason }) >= 1, reason)
  })
})

// Found by signed-agents-differential.test.ts: signatures the reference verifier accepts on the request as its
// agent built and sent it, which the proxy checked against the request as it had rewritten it.
t.test('a signature is checked against the request as its agent sent it', async (t) => {
  const { key, sidecar } = await startSignedAgentSidecar(t, { authorities: ['shop.example'] })
  const signer = createSigner(createPrivateKey({ key: key.privateJwk, format: 'jwk' }), 'ed25519', key.keyid)
  let n = 0
  /** `lines` and `target` signed (`@authority` and `fields`) by http-message-signatures, sent as raw HTTP/1.1 */
  const send = async (target: string, lines: [string, string][], fields: string[]) => {
    const headers: Record<string, string[]> = {}
    for (const [name, value] of lines)
      headers[name.toLowerCase()] = [...(headers[name.toLowerCase()] ?? []), value]
    const now = Date.now()
    const signed = await httpbis.signMessage(
      {
        key: signer,
        fields: ['@authority', ...fields],
        params: ['created', 'expires', 'keyid', 'tag'],
        paramValues: {
          created: new Date(now),
          expires: new Date(now + 60_000),
          tag: 'web-bot-auth',
        } as never,
      },
      { method: 'GET', url: `http://shop.example${target}`, headers },
    )
    const requestId = `as-sent-${++n}`
    const head = [
      `GET ${target} HTTP/1.1`,
      'Host: shop.example',
      'User-Agent: ExampleAgent/1.0',
      `X-Request-Id: ${requestId}`,
      'Connection: close',
      ...lines.map(([name, value]) => `${name}: ${value}`),
      `Signature-Input: ${signed.headers['Signature-Input']}`,
      `Signature: ${signed.headers['Signature']}`,
    ]
    const answer = await rawExchange(sidecar.proxyAddress.port, Buffer.from(`${head.join('\r\n')}\r\n\r\n`))
    t.match(answer, /^HTTP\/1\.1 200 /, 'forwarded')
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
    })
    return { identity: audit['identity'], verified: audit['verified'], failures: audit['failures'] }
  }
  const verified = { identity: 'agent.example', verified: true, failures: [] }

  await t.test('a path the proxy normalizes: the signature covers the path as sent', async (t) => {
    // forwarded as /x/~user/page (path parameters dropped, %7E decoded, dot segments resolved)
    t.same(await send('/x;v=1/%7Euser/./page?q=1', [], ['@path', '@target-uri']), verified)
  })

  await t.test('a field is read line by line as RFC 9421 §2.1 reads it', async (t) => {
    // each line stripped, then joined: "a, " (Node's joined value stripped would be "a,")
    t.same(
      await send(
        '/echo',
        [
          ['X-Tags', 'a'],
          ['X-Tags', ''],
        ],
        ['x-tags'],
      ),
      verified,
      'an empty last line',
    )
    t.same(
      await send(
        '/echo',
        [
          ['X-Parts', 'one'],
          ['X-Parts', 'two'],
        ],
        ['x-parts;bs'],
      ),
      verified,
      ';bs: each line a byte sequence of its own',
    )
    t.same(
      await send('/echo', [['X-Name', 'café']], ['x-name']),
      verified,
      'the UTF-8 bytes sent, not latin1',
    )
    t.same(await send('/echo', [['X-Name', 'café']], ['x-name;bs']), verified, 'the same with ;bs')
  })
})

t.test('explain verifies a signed request against the directory and shows the evidence', async (t) => {
  const key = await createAgentKey()
  const directory = await startKeyDirectory([key])
  t.teardown(() => directory.close())
  const dir = await scratchDir('signed')
  const file = join(dir, 'config.yaml')
  await writeFile(
    file,
    `signedAgents:\n  directories:\n    - { url: ${directory.url}, name: agent.example }\n`,
  )
  const signed = await signRequest(key, 'http://shop.test/docs', { agent: JSON.stringify(directory.origin) })
  const headers = Object.entries({ host: 'shop.test', ...signed }).flatMap(([k, v]) => ['-H', `${k}: ${v}`])
  const r = await runCli(['explain', '-c', file, '--path', '/docs', ...headers])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, `signature  verified directory=${directory.url} keyid=${key.keyid}`)
  t.match(
    r.stdout,
    /identity: agent\.example\n\s+kind=agent source=signature verified=true rule=builtin:signature/,
  )

  // as the live proxy checks it: the path as given, before normalization, and a field's value as typed
  const signer = createSigner(createPrivateKey({ key: key.privateJwk, format: 'jwk' }), 'ed25519', key.keyid)
  const now = Date.now()
  const agent = JSON.stringify(directory.origin)
  const message = await httpbis.signMessage(
    {
      key: signer,
      fields: ['@authority', '@path', 'signature-agent', 'x-name'],
      params: ['created', 'expires', 'keyid', 'tag'],
      paramValues: { created: new Date(now), expires: new Date(now + 60_000), tag: 'web-bot-auth' } as never,
    },
    {
      method: 'GET',
      url: 'http://shop.test/x;v=1/%7Euser',
      headers: { 'signature-agent': agent, 'x-name': 'café' } as Record<string, string>,
    },
  )
  const asTyped = await runCli([
    'explain',
    '-c',
    file,
    '--path',
    '/x;v=1/%7Euser',
    ...['-H', 'host: shop.test', '-H', `signature-agent: ${agent}`, '-H', 'x-name: café'],
    ...['-H', `signature-input: ${message.headers['Signature-Input']}`],
    ...['-H', `signature: ${message.headers['Signature']}`],
  ])
  t.equal(asTyped.code, 0, asTyped.stderr)
  t.match(asTyped.stdout, `signature  verified directory=${directory.url} keyid=${key.keyid}`)
})

t.test('signedAgents.authorities: a signature made for another site is refused', async (t) => {
  // today's default: the signature's @authority is checked against the request's own Host only
  const { key, directory, config, sidecar: open } = await startSignedAgentSidecar(t)
  const bound = await startTestSidecar(
    t,
    config({ authorities: ['shop.example', '*.shops.test', 'api.example:8443'] }),
  )
  let n = 0
  /** a request to `sidecar` with Host `authority`, signed for `http://<signedFor>/echo` */
  const send = async (
    sidecar: typeof open,
    authority: string,
    signedFor = authority,
    tag = 'web-bot-auth',
  ) => {
    const requestId = `authority-${++n}`
    const now = Math.floor(Date.now() / 1000)
    const signed =
      tag === 'web-bot-auth'
        ? await signRequest(key, `http://${signedFor}/echo`, { agent: JSON.stringify(directory.origin) })
        : signWithParams(
            key,
            `http://${signedFor}/echo`,
            `;created=${now};expires=${now + 60};keyid="${key.keyid}";tag="${tag}"`,
          )
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      headers: { host: authority, 'user-agent': 'ExampleAgent/1.0', 'x-request-id': requestId, ...signed },
    })
    const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
    })
    const failures = (audit['failures'] as { source: string; reason: string }[])
      .filter((f) => f.source === 'signature')
      .map((f) => f.reason)
    return { verified: echoed['x-nhi-verified'], identity: echoed['x-nhi-identity'], failures }
  }
  const unbound = await open.process.waitForLog(
    (l) => l['level'] === 40 && String(l['msg']).includes('signedAgents.authorities is empty'),
  )
  t.match(
    unbound['msg'],
    /config\.yaml:\d+:\d+ warning: .*a signature an agent made for another site would verify here/,
  )
  t.notMatch(
    bound.process.stderr(),
    /signedAgents\.authorities is empty/,
    'no warning once authorities are set',
  )
  const verified = { verified: 'true', identity: 'agent.example', failures: [] }
  const refused = { verified: 'false', identity: 'ua:exampleagent', failures: ['signature_invalid'] }

  t.same(
    await send(open, 'evil.test'),
    verified,
    'without authorities a signature for evil.test, sent with Host evil.test, verifies (the documented default)',
  )
  t.same(await send(bound, 'evil.test'), refused, 'with authorities it is refused')
  t.same(await send(bound, 'shop.example'), verified, 'a signature for this service verifies')
  t.same(await send(bound, 'SHOP.Example', 'shop.example'), verified, 'host names in any case')
  t.same(await send(bound, 'shop.example:8080'), verified, 'an entry without a port: any port')
  t.same(await send(bound, 'shop.example.'), verified, 'a trailing dot is the same name')
  t.same(
    await send(bound, 'shop.example.evil.test'),
    refused,
    'a name that starts with a listed one is not it',
  )

  t.same(await send(bound, 'eu.shops.test'), verified, '*.shops.test: a subdomain')
  t.same(await send(bound, 'a.eu.shops.test'), verified, '*.shops.test: at any depth')
  t.same(await send(bound, 'shops.test'), refused, '*.shops.test: not the bare domain')
  t.same(await send(bound, 'evilshops.test'), refused, '*.shops.test: only at a dot')

  t.same(await send(bound, 'api.example:8443'), verified, 'api.example:8443: that port')
  t.same(await send(bound, 'api.example'), refused, 'api.example:8443: not the default port')
  t.same(await send(bound, 'api.example:9443'), refused, 'api.example:8443: not another port')

  t.same(
    await send(bound, 'evil.test', 'evil.test', 'not-web-bot-auth'),
    { verified: 'false', identity: 'ua:exampleagent', failures: [] },
    "a signature that is not Web Bot Auth stays the service's business: no failure",
  )
})

t.test('the nonce cache never lets a replay through, even when it is full', async (t) => {
  // created and expires are whole seconds: a signature verifies for maxAge to maxAge + 1 s after it is made.
  // Long enough for the eight requests of a step on a loaded machine (up to 3.2 s seen at a load of 16); the
  // three waits run beside the other tests of this file
  const maxAgeMs = 6000
  const nonceCacheSize = 3
  const { key, sidecar } = await startSignedAgentSidecar(t, {
    nonceCacheSize,
    maxAge: `${maxAgeMs}ms`,
    clockSkew: '0s',
  })
  const url = `${sidecar.proxyUrl}/echo`
  let n = 0
  /** sends `headers` and answers whether the signature verified, and the request id to look its audit up by */
  const post = async (headers: Record<string, string>) => {
    const requestId = `nonce-${++n}`
    const res = await request(url, {
      headers: { 'user-agent': 'ExampleAgent/1.0', 'x-request-id': requestId, ...headers },
    })
    const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
    return { verified: echoed['x-nhi-verified'] === 'true', requestId }
  }
  const reasons = async (requestId: string) => {
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
    })
    return (audit['failures'] as { source: string; reason: string }[])
      .filter((f) => f.source === 'signature')
      .map((f) => f.reason)
  }
  // valid for maxAge from now (its expires, a minute away, is later)
  const fresh = () => signRequest(key, url)
  /** new signatures until one is refused: the cache then holds nothing but live nonces */
  const fill = async (sign: () => Promise<Record<string, string>>) => {
    for (let i = 0; i <= nonceCacheSize; i++) {
      const sent = await post(await sign())
      if (!sent.verified) return reasons(sent.requestId)
    }
    return ['every signature verified: the cache made room by forgetting live nonces']
  }
  const acceptedAgain = () =>
    eventually(async () => (await post(await fresh())).verified, {
      timeoutMs: 20_000,
      intervalMs: 100,
      what: 'a new signature to verify once the cached nonces can no longer verify',
    })

  await t.test('a replay is refused however many nonces came after it', async (t) => {
    const signed = await fresh()
    t.ok((await post(signed)).verified, 'first use verifies')
    for (let i = 0; i < 2 * nonceCacheSize; i++) await post(await fresh())
    const replay = await post(signed)
    t.notOk(replay.verified, 'the same signature again does not')
    t.same(await reasons(replay.requestId), ['signature_replayed'])
  })

  await t.test('a cache full of live nonces refuses new signatures until those expire', async (t) => {
    await acceptedAgain()
    t.same(await fill(fresh), ['replay_cache_full'], 'a new signature is refused, fail closed')
    t.ok(
      metricValue(await scrape(sidecar.adminUrl), 'nhi_auth_failures_total', {
        source: 'signature',
        reason: 'replay_cache_full',
      }) >= 1,
      'and counted',
    )
    await acceptedAgain()
    t.pass('accepted again once the cached signatures are past signedAgents.maxAge')
  })

  await t.test('a nonce is forgotten at created + maxAge, whatever expires says', async (t) => {
    // created half of maxAge ago, expiring in an hour: it can verify for the other half only
    const old = () => signRequest(key, url, { created: Date.now() - maxAgeMs / 2, lifetimeMs: 3_600_000 })
    t.same(await fill(old), ['replay_cache_full'])
    await acceptedAgain()
    t.pass('the nonces were not kept until their expires')
  })
})
