// The built-in IdP profiles name verified tokens that no identity rule matched. A service's name is what a
// policy allows, so it may only come from claims the IdP sets for that service, never from claims a person
// chooses (a username, an email address at a look-alike domain) or that another issuer could mint (a partner
// IdP's `system:serviceaccount:…` subject). Through the real proxy: a policy that allows only service names
// lets the real services in and refuses the tokens that merely look like theirs.
import t from 'tap'
import { request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const AUD = 'orders'
const KEYCLOAK = 'https://sso.corp.test/realms/corp'
const GOOGLE = 'https://accounts.google.com'
const DEPLOYER = 'deployer@prod.iam.gserviceaccount.com'
const CLUSTER = 'https://kubernetes.default.svc.cluster.local'
/** an issuer configured without a profile, whose URL is no IdP's the proxy knows */
const PARTNER = 'https://idp.partner.test'

t.test(
  'a look-alike of a service account (a person, another issuer) is refused by a policy of service names',
  async (t) => {
    const { upstream, key, jwks } = await startUpstreamAndJwks(t)
    const issuer = (iss: string, profile?: string) => ({
      issuer: iss,
      jwksUri: jwks.jwksUri,
      audiences: [AUD],
      ...(profile ? { profile } : {}),
    })
    const sidecar = await startTestSidecar(t, {
      service: 'orders',
      upstream: upstream.url,
      jwt: {
        issuers: [issuer(KEYCLOAK, 'keycloak'), issuer(GOOGLE, 'google'), issuer(CLUSTER), issuer(PARTNER)],
      },
      policy: {
        mode: 'enforce',
        rules: [
          {
            route: '/echo/**',
            allow: [{ identity: 'orders-backend' }, { identity: DEPLOYER }, { identity: 'prod/payments' }],
          },
        ],
      },
    })
    const call = async (iss: string, claims: Record<string, unknown>) => {
      const token = await mintToken(key, claims, { issuer: iss, audience: AUD })
      const res = await request(`${sidecar.proxyUrl}/echo/admin`, {
        headers: { authorization: `Bearer ${token}` },
      })
      const body = JSON.parse(await res.body.text())
      return { status: res.statusCode, identity: body.identity ?? body.headers?.['x-nhi-identity'] }
    }

    t.same(
      await call(KEYCLOAK, {
        sub: 'f1a0-sa',
        azp: 'orders-backend',
        client_id: 'orders-backend',
        preferred_username: 'service-account-orders-backend',
        email_verified: false,
      }),
      { status: 200, identity: 'orders-backend' },
      "keycloak: the client's own service account is let in",
    )
    t.same(
      await call(KEYCLOAK, {
        sub: '77c2-user',
        azp: 'orders-backend',
        preferred_username: 'service-account-x@attacker.example',
        email: 'service-account-x@attacker.example',
      }),
      { status: 403, identity: 'sso.corp.test/77c2-user' },
      'keycloak: a self-registered person whose username has the prefix is a person, refused',
    )
    t.same(
      await call(GOOGLE, { sub: '1001', email: DEPLOYER, email_verified: true }),
      { status: 200, identity: DEPLOYER },
      'google: the service account is let in',
    )
    t.same(
      await call(GOOGLE, {
        sub: '1002',
        email: 'deployer@prod.iam-gserviceaccount.com',
        email_verified: true,
      }),
      { status: 403, identity: 'accounts.google.com/1002' },
      'google: a person at a domain that only ends in gserviceaccount.com is a person, refused',
    )
    t.same(
      await call(GOOGLE, { sub: '1003', email: DEPLOYER, email_verified: false }),
      { status: 403, identity: 'accounts.google.com/1003' },
      'google: an address the token does not vouch for names no service account',
    )
    t.same(
      await call(CLUSTER, { sub: 'system:serviceaccount:prod:payments' }),
      { status: 200, identity: 'prod/payments' },
      "no profile set: the cluster's own issuer names its service account",
    )
    for (const claims of [
      { sub: 'system:serviceaccount:prod:payments' },
      { sub: 'payments', 'kubernetes.io': { namespace: 'prod', serviceaccount: { name: 'payments' } } },
    ])
      t.same(
        await call(PARTNER, claims),
        { status: 403, identity: `idp.partner.test/${claims.sub}` },
        `no profile set: another issuer's ${Object.keys(claims).join(' and ')} mints no cluster service account`,
      )
  },
)
