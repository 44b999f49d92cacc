// An identity rule may match a credential header without a capture (docs/reference.md "Identity rules"), and
// the simplest such rule names the credential itself: `authorization: "Bearer <static token>"`. /config
// showed that pattern as written, a raw token on the operator endpoint that promises none.
import t from 'tap'
import { redactConfig } from '../../src/config/redact.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const SECRETS = ['s3cret-static-token', 'sid=abc123', 'pk_live_partner', 'hmac-shared-value', 'tok-2']

t.test('/config masks the header patterns of credential headers, and only those', async (t) => {
  const sidecar = await startTestSidecar(t, {
    apiKeys: { header: 'x-partner-sig' },
    identities: [
      {
        name: 'internal-batch',
        match: {
          header: {
            Authorization: `Bearer ${SECRETS[0]}`,
            cookie: SECRETS[1]!,
            'x-partner-sig': SECRETS[2]!,
            'X-Upstream-Auth': SECRETS[3]!,
            'x-apitoken': SECRETS[4]!,
            'x-tenant': 'acme',
          },
        },
      },
    ],
  })
  const res = await fetch(`${sidecar.adminUrl}/config`)
  t.equal(res.status, 200)
  const text = await res.text()
  for (const secret of SECRETS) t.notMatch(text, secret, `${secret} is not on /config`)
  const shown = (JSON.parse(text) as { identities: { match: { header: Record<string, string> } }[] })
    .identities[0]!.match.header
  t.same(
    shown,
    {
      Authorization: '<redacted>',
      cookie: '<redacted>',
      'x-partner-sig': '<redacted>',
      'X-Upstream-Auth': '<redacted>',
      'x-apitoken': '<redacted>',
      'x-tenant': 'acme',
    },
    'names kept, credential values masked, other patterns shown',
  )
  const once = redactConfig(JSON.parse(text))
  t.same(once, JSON.parse(text), 'idempotent')
})
