// A known AI agent's operator and purpose reach /identities and the audit record; crawlers the overlay does
// not describe carry neither, and names are product tokens in the ua: namespace. A verified identity takes
// neither from its user agent: that is what the client wrote, not what was checked.
import { createHash } from 'node:crypto'
import t from 'tap'
import { request } from 'undici'
import { auditLine, toAuditRecord } from '../../src/telemetry/audit.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { eventually } from '../helpers/eventually.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { createAgentKey, signRequest, startKeyDirectory } from '../helpers/signed-agent.ts'
import { startUpstream } from '../helpers/upstream.ts'

interface Row {
  name: string
  kind: string
  operator?: string
  purpose?: string
}

const GPTBOT =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)'
const CHATGPT_USER =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot'
const BINGBOT = 'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)'

t.test('/identities shows operator and purpose of AI agents seen over the wire', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, { service: 'shop', upstream: upstream.url })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const names: string[] = []
  for (const ua of [GPTBOT, CHATGPT_USER, BINGBOT, 'claude-cli/2.0.14 (external, cli)']) {
    const res = await request(`${proxy}/echo`, { headers: { 'user-agent': ua } })
    const body = JSON.parse(await res.body.text()) as { headers: Record<string, string> }
    names.push(body.headers['x-nhi-identity'] ?? '')
  }
  t.same(names, ['ua:gptbot', 'ua:chatgpt-user', 'ua:bingbot', 'ua:claude-code'])
  const view = await eventually(
    async () => {
      const v = (await (await fetch(`${admin}/identities`)).json()) as { identities: Row[] }
      return names.every((n) => v.identities.some((i) => i.name === n)) && v
    },
    { what: 'the four identities in /identities' },
  )
  const row = (name: string) => {
    const r = view.identities.find((i) => i.name === name)
    return r && [r.kind, r.operator, r.purpose]
  }
  t.same(row('ua:gptbot'), ['agent', 'OpenAI', 'training'])
  t.same(row('ua:chatgpt-user'), ['agent', 'OpenAI', 'assistant'])
  t.same(row('ua:claude-code'), ['agent', 'Anthropic', 'coding'])
  t.same(row('ua:bingbot'), ['bot', undefined, undefined])
})

t.test('the audit record and its fast line carry the agent fields', async (t) => {
  const who = identity('ua:gptbot', {
    kind: 'agent',
    source: 'useragent',
    verified: false,
    attributes: { ua_product: 'gptbot', agent_operator: 'OpenAI', agent_purpose: 'training' },
  })
  const event = requestEvent({ identity: who })
  const record = toAuditRecord(event)
  t.equal(record.agent_operator, 'OpenAI')
  t.equal(record.agent_purpose, 'training')
  const line = JSON.parse(auditLine(event)) as Record<string, unknown>
  t.equal(line['agent_operator'], 'OpenAI')
  t.equal(line['agent_purpose'], 'training')
  const plain = JSON.parse(auditLine(requestEvent({ identity: identity('ua:bingbot', { kind: 'bot' }) })))
  t.notOk('agent_operator' in plain, 'absent when unknown')
})

t.test('a verified identity takes no operator or purpose from its user agent', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const [plain, contoso] = await Promise.all([createAgentKey(), createAgentKey()])
  const [plainDir, contosoDir] = await Promise.all([startKeyDirectory([plain]), startKeyDirectory([contoso])])
  t.teardown(() => plainDir.close())
  t.teardown(() => contosoDir.close())
  const apiKey = 'nhi_live_reports_0123456789'
  const sidecar = await startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    apiKeys: { keys: [{ name: 'reports', sha256: createHash('sha256').update(apiKey).digest('hex') }] },
    signedAgents: {
      authorities: ['127.0.0.1'],
      directories: [
        { url: plainDir.url, name: 'acme-agent' },
        { url: contosoDir.url, name: 'contoso-agent', operator: 'Contoso' },
      ],
    },
  })
  const url = `${sidecar.proxyUrl}/echo`
  let n = 0
  const send = async (headers: Record<string, string>) => {
    const requestId = `attributes-${++n}`
    const res = await request(url, { headers: { 'x-request-id': requestId, ...headers } })
    const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
    })
    return {
      identity: echoed['x-nhi-identity'],
      verified: echoed['x-nhi-verified'],
      operator: audit['agent_operator'],
      purpose: audit['agent_purpose'],
    }
  }
  const CLAUDEBOT = 'ClaudeBot/1.0'

  t.same(
    await send({ 'user-agent': CLAUDEBOT }),
    { identity: 'ua:claudebot', verified: 'false', operator: 'Anthropic', purpose: 'training' },
    'control: the user agent alone describes an unverified agent',
  )
  t.same(
    await send({ 'user-agent': CLAUDEBOT, ...(await signRequest(plain, url)) }),
    { identity: 'acme-agent', verified: 'true', operator: undefined, purpose: undefined },
    'a directory entry without operator and purpose: the identity has none',
  )
  t.same(
    await send({ 'user-agent': GPTBOT, ...(await signRequest(plain, url)) }),
    { identity: 'acme-agent', verified: 'true', operator: undefined, purpose: undefined },
    'whichever agent the user agent names',
  )
  t.same(
    await send({ 'user-agent': 'Bytespider', ...(await signRequest(contoso, url)) }),
    { identity: 'contoso-agent', verified: 'true', operator: 'Contoso', purpose: undefined },
    "an entry with an operator only: no purpose from the user agent's",
  )
  t.same(
    await send({ 'user-agent': CLAUDEBOT, 'x-api-key': apiKey }),
    { identity: 'reports', verified: 'true', operator: undefined, purpose: undefined },
    'nor does any other verified credential take them',
  )

  const view = await eventually(
    async () => {
      const v = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as { identities: Row[] }
      const names = ['acme-agent', 'contoso-agent', 'reports']
      return names.every((name) => v.identities.some((i) => i.name === name)) && v
    },
    { what: 'the verified identities in /identities' },
  )
  const row = (name: string) => {
    const r = view.identities.find((i) => i.name === name)
    return r && [r.operator, r.purpose]
  }
  t.same(row('acme-agent'), [undefined, undefined])
  t.same(row('contoso-agent'), ['Contoso', undefined])
  t.same(row('reports'), [undefined, undefined])
})
