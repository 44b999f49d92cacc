// IdP profiles: each built-in profile against a token with that IdP's real claim shape, plus one end-to-end run
// (a Kubernetes projected service-account token verified over a real JWKS, then classified).
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { JwtExtractor } from '../../src/identity/extractors/jwt.ts'
import { detectProfile, profileIdentity } from '../../src/identity/profiles.ts'
import type { JwtEvidence } from '../../src/types.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'

const NOW = 1_760_000_000

function evidence(issuer: string, claims: Record<string, unknown>, profile?: string): JwtEvidence {
  const ev: JwtEvidence = {
    source: 'jwt',
    verified: true,
    issuer,
    claims: { iss: issuer, iat: NOW, exp: NOW + 3600, ...claims },
    alg: 'RS256',
    fingerprint: '0123456789abcdef',
    exp: NOW + 3600,
  }
  if (profile) ev.profile = profile
  return ev
}

const K8S_ISSUER = 'https://kubernetes.default.svc.cluster.local'
const k8sClaims = {
  aud: ['checkout', 'https://kubernetes.default.svc.cluster.local'],
  jti: 'b4b3b5d2-0a4c-4c5e-9a1f-5d1c7c6e2f10',
  nbf: NOW,
  sub: 'system:serviceaccount:payments:api',
  'kubernetes.io': {
    namespace: 'payments',
    node: { name: 'ip-10-0-1-23.ec2.internal', uid: '9f1c…' },
    pod: { name: 'api-7d9c8b6f5-x2k4q', uid: '4c6a2b1e-0000-4000-8000-000000000001' },
    serviceaccount: { name: 'api', uid: '7e1d3a52-0000-4000-8000-000000000002' },
    warnafter: NOW + 600,
  },
}

t.test('kubernetes: projected service-account token', async (t) => {
  const id = profileIdentity(evidence(K8S_ISSUER, k8sClaims, 'kubernetes'))
  t.match(id, {
    name: 'payments/api',
    kind: 'service',
    rule: 'builtin:profile:kubernetes',
    expiresAt: NOW + 600,
    attributes: {
      iss: K8S_ISSUER,
      sub: 'system:serviceaccount:payments:api',
      aud: 'checkout,https://kubernetes.default.svc.cluster.local',
      jti: k8sClaims.jti,
      ns: 'payments',
      sa: 'api',
      pod: 'api-7d9c8b6f5-x2k4q',
      node: 'ip-10-0-1-23.ec2.internal',
    },
  })
  t.equal(id.expiresAt, NOW + 600, 'warnafter earlier than exp counts as expiry')
  const legacy = profileIdentity(
    evidence('kubernetes/serviceaccount', {
      sub: 'system:serviceaccount:ci:builder',
      'kubernetes.io/serviceaccount/namespace': 'ci',
    }),
  )
  t.match(legacy, {
    name: 'ci/builder',
    kind: 'service',
    rule: 'builtin:profile:kubernetes',
    expiresAt: NOW + 3600,
  })
})

t.test('github-actions: workflow OIDC token', async (t) => {
  const iss = 'https://token.actions.githubusercontent.com'
  const id = profileIdentity(
    evidence(iss, {
      jti: 'example-id',
      sub: 'repo:octo-org/octo-repo:environment:prod',
      aud: 'https://github.com/octo-org',
      ref: 'refs/heads/main',
      sha: 'example-sha',
      repository: 'octo-org/octo-repo',
      repository_owner: 'octo-org',
      actor_id: '12',
      repository_visibility: 'private',
      repository_id: '74',
      repository_owner_id: '65',
      run_id: '123456789',
      run_number: '10',
      run_attempt: '1',
      runner_environment: 'github-hosted',
      actor: 'octocat',
      workflow: 'nightly-export',
      head_ref: '',
      base_ref: '',
      event_name: 'schedule',
      ref_type: 'branch',
      environment: 'prod',
      job_workflow_ref: 'octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main',
    }),
  )
  t.match(id, {
    name: 'github/octo-org/octo-repo',
    kind: 'job',
    rule: 'builtin:profile:github-actions',
    attributes: {
      repository: 'octo-org/octo-repo',
      workflow: 'nightly-export',
      ref: 'refs/heads/main',
      run_id: '123456789',
      // the user who triggered the run, apart from the RFC 8693 `actor` of delegated tokens
      github_actor: 'octocat',
      job_workflow_ref: 'octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main',
      aud: 'https://github.com/octo-org',
    },
  })
  t.notOk('head_ref' in id.attributes, 'empty claims are not attributes')
  t.notOk('actor' in id.attributes, "no delegation: the run was not made on anyone's behalf")
})

t.test('auth0: machine-to-machine vs user access token', async (t) => {
  const iss = 'https://acme.eu.auth0.com/'
  const m2m = profileIdentity(
    evidence(iss, {
      sub: 'k3Jd8sPq0zWcXv1YbN2mL4hG6fR9tE7u@clients',
      aud: 'https://api.acme.example',
      azp: 'k3Jd8sPq0zWcXv1YbN2mL4hG6fR9tE7u',
      scope: 'read:orders',
      gty: 'client-credentials',
    }),
  )
  t.match(m2m, {
    name: 'k3Jd8sPq0zWcXv1YbN2mL4hG6fR9tE7u',
    kind: 'service',
    rule: 'builtin:profile:auth0',
    attributes: { azp: 'k3Jd8sPq0zWcXv1YbN2mL4hG6fR9tE7u', scope: 'read:orders' },
  })
  const user = profileIdentity(
    evidence(iss, {
      sub: 'google-oauth2|104881234567890123456',
      aud: ['https://api.acme.example', 'https://acme.eu.auth0.com/userinfo'],
      azp: 'Spa1Client2Id3',
      scope: 'openid profile email',
    }),
  )
  t.match(user, { name: 'acme.eu.auth0.com/google-oauth2|104881234567890123456', kind: 'human' })
})

t.test('azure-ad: v2 app-only token vs user token', async (t) => {
  const tid = '72f988bf-86f1-41af-91ab-2d7cd011db47'
  const iss = `https://login.microsoftonline.com/${tid}/v2.0`
  const app = profileIdentity(
    evidence(iss, {
      aud: 'api://orders',
      azp: '0a1b2c3d-1111-2222-3333-444455556666',
      azpacr: '1',
      idp: `https://sts.windows.net/${tid}/`,
      idtyp: 'app',
      oid: 'c0ffee00-aaaa-bbbb-cccc-ddddeeeeffff',
      roles: ['Orders.Read.All', 'Orders.Write'],
      sub: 'c0ffee00-aaaa-bbbb-cccc-ddddeeeeffff',
      tid,
      ver: '2.0',
    }),
  )
  t.match(app, {
    name: '0a1b2c3d-1111-2222-3333-444455556666',
    kind: 'service',
    rule: 'builtin:profile:azure-ad',
    attributes: { tid, roles: 'Orders.Read.All,Orders.Write', azp: '0a1b2c3d-1111-2222-3333-444455556666' },
  })
  t.equal(detectProfile(evidence(iss, {})), 'azure-ad', 'detected from the issuer')
  const v1App = profileIdentity(
    evidence(`https://sts.windows.net/${tid}/`, {
      appid: '0a1b2c3d-1111-2222-3333-444455556666',
      roles: ['Orders.Read.All'],
      sub: 'c0ffee00-aaaa-bbbb-cccc-ddddeeeeffff',
      ver: '1.0',
    }),
  )
  t.match(v1App, { name: '0a1b2c3d-1111-2222-3333-444455556666', kind: 'service' })
  const user = profileIdentity(
    evidence(iss, {
      aud: 'api://orders',
      azp: 'spa-client-id',
      name: 'Alice Example',
      oid: '11111111-2222-3333-4444-555555555555',
      preferred_username: 'alice@contoso.com',
      scp: 'Orders.Read',
      sub: 'AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ',
      tid,
      ver: '2.0',
    }),
  )
  t.match(user, {
    kind: 'human',
    name: 'login.microsoftonline.com/AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ',
    attributes: { preferred_username: 'alice@contoso.com', tid },
  })
})

t.test('okta: client credentials vs user', async (t) => {
  const iss = 'https://acme.okta.com/oauth2/default'
  const svc = profileIdentity(
    evidence(iss, {
      ver: 1,
      jti: 'AT.0mP4JKAZX1iACIT4vbEDF7LpvDVjxypPMf0D7uX39RE',
      aud: 'api://default',
      cid: '0oa1a2b3c4d5e6f7g8h9',
      scp: ['orders.read'],
      sub: '0oa1a2b3c4d5e6f7g8h9',
    }),
  )
  t.match(svc, {
    name: '0oa1a2b3c4d5e6f7g8h9',
    kind: 'service',
    rule: 'builtin:profile:okta',
    attributes: { client_id: '0oa1a2b3c4d5e6f7g8h9', scp: 'orders.read' },
  })
  const user = profileIdentity(
    evidence(iss, { cid: '0oaSpaClient', uid: '00u1a2b3c4d5', sub: 'alice@acme.example', scp: ['openid'] }),
  )
  t.match(user, {
    kind: 'human',
    name: 'acme.okta.com/alice@acme.example',
    attributes: { uid: '00u1a2b3c4d5' },
  })
})

t.test('keycloak: service account vs user', async (t) => {
  const iss = 'https://sso.acme.example/realms/prod'
  const svc = profileIdentity(
    evidence(iss, {
      typ: 'Bearer',
      azp: 'billing-export',
      client_id: 'billing-export',
      preferred_username: 'service-account-billing-export',
      sub: 'a2c4e6f8-1234-4abc-8def-0123456789ab',
      realm_access: { roles: ['offline_access'] },
      scope: 'profile email',
    }),
  )
  t.match(svc, { name: 'billing-export', kind: 'service', rule: 'builtin:profile:keycloak' })
  const user = profileIdentity(
    evidence(iss, {
      typ: 'Bearer',
      azp: 'web',
      preferred_username: 'alice',
      email: 'alice@acme.example',
      sub: 'f1e2d3c4-1234-4abc-8def-0123456789ab',
    }),
  )
  t.match(user, {
    kind: 'human',
    rule: 'builtin:profile:keycloak',
    attributes: { email: 'alice@acme.example', preferred_username: 'alice' },
  })
  const legacy = profileIdentity(
    evidence(iss, {
      azp: 'Billing-Export',
      clientId: 'Billing-Export',
      preferred_username: 'service-account-billing-export',
      sub: 'b3d5f7a9-1234-4abc-8def-0123456789ab',
      email_verified: false,
    }),
  )
  t.match(legacy, { name: 'Billing-Export', kind: 'service' }, 'clientId, and the lower-cased username')
})

// People choose their usernames (self-registration; with "email as username" any address), and azp is just
// the client they logged in through: neither may make a person the service account of that client.
t.test("keycloak: a person's token is never named like a client's service account", async (t) => {
  const iss = 'https://sso.acme.example/realms/prod'
  const people: Record<string, Record<string, unknown>> = {
    'username with the prefix, logged in through the client': {
      azp: 'orders-backend',
      preferred_username: 'service-account-x@attacker.example',
      email: 'service-account-x@attacker.example',
    },
    "the service account's exact username, no client id claim": {
      azp: 'orders-backend',
      preferred_username: 'service-account-orders-backend',
    },
    'a client id claim another username does not match': {
      azp: 'orders-backend',
      client_id: 'orders-backend',
      preferred_username: 'service-account-orders-backend-2',
    },
    'the username of one client, a token of another': {
      azp: 'web',
      client_id: 'orders-backend',
      preferred_username: 'service-account-orders-backend',
    },
  }
  for (const [label, claims] of Object.entries(people)) {
    const sub = 'c0ffee00-1234-4abc-8def-0123456789ab'
    const id = profileIdentity(evidence(iss, { typ: 'Bearer', sub, ...claims }, 'keycloak'))
    t.match(id, { name: `sso.acme.example/${sub}`, kind: 'human', rule: 'builtin:profile:keycloak' }, label)
    const generic = profileIdentity(
      evidence('https://idp.acme.example', { sub, email: 'x@acme.example', ...claims }, 'generic'),
    )
    t.equal(generic.kind, 'human', `${label}: no client-credentials marker for the generic profile either`)
  }
})

t.test('google: service account ID token vs user', async (t) => {
  const iss = 'https://accounts.google.com'
  const svc = profileIdentity(
    evidence(iss, {
      aud: 'https://orders.acme.example',
      azp: '112233445566778899000',
      email: 'exporter@acme-prod.iam.gserviceaccount.com',
      email_verified: true,
      sub: '112233445566778899000',
    }),
  )
  t.match(svc, {
    name: 'exporter@acme-prod.iam.gserviceaccount.com',
    kind: 'service',
    rule: 'builtin:profile:google',
  })
  const user = profileIdentity(
    evidence(iss, {
      aud: 'client.apps.googleusercontent.com',
      email: 'bob@gmail.com',
      sub: '1098765432101234',
    }),
  )
  t.match(user, {
    kind: 'human',
    name: 'accounts.google.com/1098765432101234',
    attributes: { email: 'bob@gmail.com' },
  })
})

// Only Google's own subdomains of gserviceaccount.com hold service accounts, and only an address the token
// vouches for (email_verified) names one: a person's address at a domain that merely ends in the same letters
// is a person's.
t.test('google: a service account is a verified address at a subdomain of gserviceaccount.com', async (t) => {
  const iss = 'https://accounts.google.com'
  const sub = '1098765432101234'
  const named = (email: string, verified: unknown = true) =>
    profileIdentity(evidence(iss, { sub, email, email_verified: verified }, 'google'))
  for (const email of [
    'exporter@acme-prod.iam.gserviceaccount.com',
    '123456789012-compute@developer.gserviceaccount.com',
    'acme-prod@appspot.gserviceaccount.com',
    'service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com',
  ])
    t.match(named(email), { name: email, kind: 'service', rule: 'builtin:profile:google' }, email)
  t.match(named('exporter@acme-prod.iam.gserviceaccount.com', 'true'), { kind: 'service' }, "'true' as text")
  for (const email of [
    'deployer@prod.iam-gserviceaccount.com',
    'deployer@evilgserviceaccount.com',
    'deployer@gserviceaccount.com',
    'deployer@prod.iam.gserviceaccount.com.attacker.example',
    'deployer@-x.gserviceaccount.com',
  ]) {
    t.match(named(email), { name: `accounts.google.com/${sub}`, kind: 'human' }, `${email}: a person`)
    const generic = profileIdentity(
      evidence('https://idp.acme.example', { sub, email, email_verified: true }),
    )
    t.equal(generic.kind, 'human', `${email}: no client-credentials marker for the generic profile`)
  }
  for (const verified of [false, 'false', undefined])
    t.match(
      profileIdentity(
        evidence(
          iss,
          {
            sub,
            email: 'deployer@prod.iam.gserviceaccount.com',
            ...(verified === undefined ? {} : { email_verified: verified }),
          },
          'google',
        ),
      ),
      { name: `accounts.google.com/${sub}`, kind: 'human' },
      `email_verified ${JSON.stringify(verified) ?? 'absent'}: the address is not vouched for`,
    )
})

t.test('spiffe: JWT-SVID', async (t) => {
  // a SPIRE issuer's URL is whatever its operator chose: nothing to guess the profile from
  const svid = profileIdentity(
    evidence(
      'https://oidc.spire.acme.example',
      {
        sub: 'spiffe://acme.example/ns/payments/sa/api',
        aud: ['orders'],
      },
      'spiffe',
    ),
  )
  t.match(svid, {
    name: 'spiffe://acme.example/ns/payments/sa/api',
    kind: 'service',
    rule: 'builtin:profile:spiffe',
    attributes: { spiffe_id: 'spiffe://acme.example/ns/payments/sa/api' },
  })
  const bogus = profileIdentity(
    evidence('https://oidc.spire.acme.example', { sub: 'spiffe://Acme.example/../x' }, 'spiffe'),
  )
  t.equal(bogus.rule, 'builtin:profile:generic', 'an invalid SPIFFE ID falls back to generic')
  // the standard's bounds, as for a certificate's URI SAN: a trust domain of at most 255 bytes, 2048 in all
  for (const sub of [
    `spiffe://${'a'.repeat(256)}/x`,
    `spiffe://td/${'a'.repeat(2048 - 'spiffe://td/'.length + 1)}`,
  ]) {
    const long = profileIdentity(evidence('https://oidc.spire.acme.example', { sub }, 'spiffe'))
    t.equal(long.rule, 'builtin:profile:generic', `a ${sub.length}-byte sub past a bound is no SPIFFE ID`)
  }
  const longest = `spiffe://${'a'.repeat(255)}/${'b'.repeat(2048 - 'spiffe://'.length - 256)}`
  t.equal(longest.length, 2048)
  t.equal(
    profileIdentity(evidence('https://oidc.spire.acme.example', { sub: longest }, 'spiffe')).rule,
    'builtin:profile:spiffe',
    'an ID at both bounds is one',
  )
})

t.test('generic: person-looking tokens are human, others service; names are stable', async (t) => {
  const iss = 'https://idp.acme.example'
  const human = profileIdentity(evidence(iss, { sub: 'u-42', email: 'carol@acme.example' }, 'generic'))
  t.match(human, { name: 'idp.acme.example/u-42', kind: 'human', rule: 'builtin:profile:generic' })
  const svc = profileIdentity(
    evidence(iss, { sub: 'reporting-bot', client_id: 'reporting-bot', scope: 'read' }),
  )
  t.match(svc, {
    name: 'idp.acme.example/reporting-bot',
    kind: 'service',
    attributes: { client_id: 'reporting-bot' },
  })
  const ccWithEmail = profileIdentity(
    evidence(iss, { sub: 'x@clients', email: 'owner@acme.example', gty: 'client-credentials' }),
  )
  t.equal(ccWithEmail.kind, 'service', 'client-credentials markers win over an email claim')
  const noExp = profileIdentity({ ...evidence(iss, { sub: 'y' }), exp: undefined })
  t.equal(noExp.expiresAt, undefined)
  t.same(profileIdentity(evidence(iss, { sub: 'u-42', email: 'carol@acme.example' })), human, 'deterministic')
})

t.test('profile detection for issuers configured without one', async (t) => {
  t.equal(detectProfile(evidence(K8S_ISSUER, k8sClaims)), 'kubernetes')
  for (const iss of [
    'kubernetes/serviceaccount',
    'https://kubernetes.default.svc',
    'https://kubernetes.default.svc.prod.acme.internal',
    'https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF',
    'https://container.googleapis.com/v1/projects/acme/locations/europe-west1/clusters/prod',
    'https://westeurope.oic.prod-aks.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47/0a1b2c3d-1111-2222-3333-444455556666/',
  ])
    t.equal(detectProfile(evidence(iss, {})), 'kubernetes', `a cluster's issuer: ${iss}`)
  t.equal(detectProfile(evidence('https://token.actions.githubusercontent.com', {})), 'github-actions')
  t.equal(detectProfile(evidence('https://accounts.google.com', {})), 'google')
  t.equal(detectProfile(evidence('https://acme.us.auth0.com/', {})), 'auth0')
  t.equal(detectProfile(evidence('https://acme.okta.com/oauth2/default', {})), 'okta')
  t.equal(detectProfile(evidence('https://sso.acme.example/realms/prod', {})), 'keycloak')
  t.equal(detectProfile(evidence('https://idp.acme.example', { sub: 'x' })), 'generic')
})

// The claims are the issuer's to choose: guessed from them, a partner's IdP could mint the name of the
// cluster's own service account (prod/payments) or of a mesh certificate (spiffe://…).
t.test("an issuer's claims never make it another issuer's profile", async (t) => {
  const partner = 'https://idp.partner.example'
  for (const claims of [
    { sub: 'system:serviceaccount:prod:payments' },
    { sub: 'x', 'kubernetes.io': { namespace: 'prod', serviceaccount: { name: 'payments' } } },
    { sub: 'spiffe://cluster.local/ns/prod/sa/payments' },
  ]) {
    t.equal(detectProfile(evidence(partner, claims)), 'generic', JSON.stringify(claims))
    t.match(
      profileIdentity(evidence(partner, claims)),
      { name: `idp.partner.example/${claims.sub}`, rule: 'builtin:profile:generic' },
      'named under the issuer host',
    )
  }
  t.match(
    profileIdentity(evidence(K8S_ISSUER, { sub: 'system:serviceaccount:prod:payments' })),
    { name: 'prod/payments', rule: 'builtin:profile:kubernetes' },
    "the cluster's issuer: its service account",
  )
})

t.test('end to end: a Kubernetes token verified over a real JWKS, then classified', async (t) => {
  const key = await createSigningKey('k8s-1')
  const idp = await startJwksServer([key])
  t.teardown(() => idp.close())
  const cfg = configSchema.parse({
    jwt: {
      issuers: [{ issuer: K8S_ISSUER, jwksUri: idp.jwksUri, audiences: ['checkout'], profile: 'kubernetes' }],
    },
  }).jwt
  const x = new JwtExtractor(cfg)
  t.teardown(() => x.close())
  await x.start()
  const now = Math.floor(Date.now() / 1000)
  const {
    iat: _iat,
    exp: _exp,
    nbf: _nbf,
    ...claims
  } = {
    ...k8sClaims,
    'kubernetes.io': { ...k8sClaims['kubernetes.io'], warnafter: now + 600 },
  } as Record<string, unknown>
  const token = await mintToken(key, claims, { issuer: K8S_ISSUER, expiresIn: 3600 })
  const ev = await x.extract(
    { method: 'GET', path: '/', url: '/', headers: { authorization: `Bearer ${token}` } },
    {
      remoteAddress: '127.0.0.1',
      remotePort: 1,
      tls: false,
    },
  )
  if (!ev || 'failed' in ev) {
    t.fail(`token did not verify: ${JSON.stringify(ev)}`)
    return
  }
  t.match(profileIdentity(ev), { name: 'payments/api', kind: 'service', expiresAt: now + 600 })
})
