// A team or zone a rule fills from a header capture is the client's text, repeated on every /identities row
// and audit line of the identity: it is cut to 256 characters like a made-up name, whatever the header holds.
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

interface Row {
  name: string
  team?: string
  zone?: string
}

t.test('a team and zone captured from a header are at most 256 characters', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    identities: [
      {
        name: 'tenant',
        rule: 'tenants',
        kind: 'service',
        team: 'team-{t}',
        zone: '{t}',
        match: { header: { 'x-tenant': '{t}' } },
      },
    ],
  })
  const long = 'a'.repeat(6000)
  const res = await request(`${sidecar.proxyUrl}/echo`, {
    headers: { 'x-tenant': long, 'x-request-id': 'long-tenant' },
  })
  await res.body.text()
  t.equal(res.statusCode, 200)
  const row = await eventually(
    async () => {
      const v = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as { identities: Row[] }
      return v.identities.find((i) => i.team?.startsWith('team-aaa'))
    },
    { what: 'the identity in /identities' },
  )
  t.equal(row.team, `team-${'a'.repeat(251)}`, 'the team is cut at 256 characters')
  t.equal(row.zone, 'a'.repeat(256), 'the zone too')
  const audit = await eventually(async () => {
    const r = await fetch(`${sidecar.adminUrl}/audit?request_id=long-tenant`)
    return ((await r.json()) as { events: Row[] }).events[0]
  })
  t.equal(audit.team, row.team, 'the audit line carries the cut team')
  t.equal(audit.zone, row.zone, 'and the cut zone')
})
