// A request may carry more than one Web Bot Auth signature (an agent's, and an intermediary's beside it), and
// the proxy forwards them all: whoever sees the request upstream can lift any one of them out and send it on.
// Every label that verifies has its nonce spent, not only the one the identity is named after, so none of
// them verifies a second time, alone, reordered or together.
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { createAgentKey, signRequest, startKeyDirectory } from '../helpers/signed-agent.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** Signature and Signature-Input of `signed` (one label, sig1) under `label` instead (a label is not signed) */
const relabel = (signed: Record<string, string>, label: string): Record<string, string> => ({
  'signature-input': signed['signature-input']!.replace(/^sig1=/, `${label}=`),
  signature: signed['signature']!.replace(/^sig1=/, `${label}=`),
})

/** the labels of every `parts` in one request, in that order */
const together = (...parts: Record<string, string>[]): Record<string, string> => ({
  'signature-input': parts.map((p) => p['signature-input']).join(', '),
  signature: parts.map((p) => p['signature']).join(', '),
})

t.test('every verified label of a request spends its nonce', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const [keyA, keyB] = await Promise.all([createAgentKey(), createAgentKey()])
  const [dirA, dirB] = await Promise.all([startKeyDirectory([keyA]), startKeyDirectory([keyB])])
  t.teardown(() => dirA.close())
  t.teardown(() => dirB.close())
  const sidecar = await startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    signedAgents: {
      requireNonce: true,
      authorities: ['127.0.0.1'],
      directories: [
        { url: dirA.url, name: 'agent-a' },
        { url: dirB.url, name: 'agent-b' },
      ],
    },
  })
  const url = `${sidecar.proxyUrl}/echo`
  let n = 0
  const send = async (headers: Record<string, string>) => {
    const requestId = `labels-${++n}`
    const res = await request(url, {
      headers: { 'user-agent': 'ExampleAgent/1.0', 'x-request-id': requestId, ...headers },
    })
    const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
    })
    const reasons = (audit['failures'] as { source: string; reason: string }[])
      .filter((f) => f.source === 'signature')
      .map((f) => f.reason)
    return {
      identity: echoed['x-nhi-identity'],
      verified: echoed['x-nhi-verified'],
      forwarded: echoed['signature-input'],
      reasons,
    }
  }
  const replayed = { identity: 'ua:exampleagent', verified: 'false', reasons: ['signature_replayed'] }

  const pair = async () => ({
    a: relabel(await signRequest(keyA, url), 'a'),
    b: relabel(await signRequest(keyB, url), 'b'),
  })

  await t.test('a lifted second label is a replay, alone or moved first', async (t) => {
    const { a, b } = await pair()
    const both = together(a, b)
    const first = await send(both)
    t.match(first, { identity: 'agent-a', verified: 'true', reasons: [] }, 'named after the first label')
    t.equal(first.forwarded, both['signature-input'], 'both labels go upstream')
    t.match(await send(b), replayed, 'label b alone')
    t.match(await send(a), replayed, 'label a alone')
    t.match(await send(both), replayed, 'the whole request again')

    const other = await pair()
    t.match(await send(together(other.a, other.b)), { identity: 'agent-a', verified: 'true' })
    t.match(await send(together(other.b, other.a)), replayed, 'the labels swapped')
  })

  await t.test('a label that does not verify leaves the request to the others, in any order', async (t) => {
    const alter = (label: Record<string, string>) => ({
      ...label,
      signature: label['signature']!.replace(/:(.)/, (_, c) => `:${c === 'A' ? 'B' : 'A'}`),
    })
    const first = await pair()
    t.match(
      await send(together(first.a, alter(first.b))),
      { identity: 'agent-a', verified: 'true', reasons: [] },
      'an altered label after it',
    )
    const second = await pair()
    t.match(
      await send(together(alter(second.a), second.b)),
      { identity: 'agent-b', verified: 'true', reasons: [] },
      'an altered label before it',
    )
    t.match(await send(second.b), replayed, 'and its nonce is spent')
  })

  await t.test('a label that verified in a request refused for another label is spent too', async (t) => {
    const { a, b } = await pair()
    t.match(await send(b), { identity: 'agent-b', verified: 'true' })
    t.match(await send(together(a, b)), replayed, 'b again, beside a new label')
    t.match(await send(a), replayed, 'label a lifted out of it')
  })

  await t.test('one signature under two labels is one use of it', async (t) => {
    const signed = await signRequest(keyB, url)
    const twice = together(relabel(signed, 'x'), relabel(signed, 'y'))
    t.match(await send(twice), { identity: 'agent-b', verified: 'true', reasons: [] })
    t.match(await send(twice), replayed, 'and a replay after that')
  })
})
