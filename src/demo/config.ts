// The demo's embedded config: the same YAML an operator would write, validated by the same loader.
import { AUDIENCE, ISSUERS } from './idp.ts'

export const BILLING_EXPORT_KEY = 'demo-billing-export-key-not-a-secret'
// sha256 of BILLING_EXPORT_KEY (`printf %s KEY | sha256sum`), checked by a test
export const BILLING_EXPORT_KEY_SHA256 = '3bc3645f3160035c80d27ac3ecd5eecc246f2c2d33cc6149be6b24c6bddd743b'

export function demoConfigYaml(o: {
  listen: string
  https: string
  admin: string
  upstream: string
  jwksUri: string
  /** the demo signed agent's key directory */
  directoryUrl: string
  audit: boolean
}): string {
  return `# nhi-proxy demo configuration (embedded)
service: checkout
listen:
  http: ${o.listen}
  https:
    address: ${o.https}
    cert: embedded
    key: embedded
    clientCA: embedded
    clientCert: optional
upstream: ${o.upstream}
admin: ${o.admin}
forwardedClientCert:
  # the demo's "mesh gateway" connects from 127.0.0.2; anyone else sending XFCC is spoofing. It is also the
  # only peer whose X-Forwarded-For names the client address a crawler's claim is checked against
  trustedProxies: [127.0.0.2/32]
  format: xfcc                    # the one header the gateway sets; any other family is a spoof
  toUpstream: sanitize_set
jwt:
  issuers:
    - issuer: ${ISSUERS.kubernetes}
      profile: kubernetes
      jwksUri: ${o.jwksUri}
      audiences: [${AUDIENCE}]
    - issuer: ${ISSUERS.github}
      profile: github-actions
      jwksUri: ${o.jwksUri}
      audiences: [${AUDIENCE}]
    - issuer: ${ISSUERS.auth0}
      profile: auth0
      jwksUri: ${o.jwksUri}
      audiences: [${AUDIENCE}]
  onInvalid: attribute
signedAgents:
  # the demo's Web Bot Auth agent publishes its key in this directory; its signed requests are verified
  directories:
    - { url: ${o.directoryUrl}, name: agent.demo, operator: Demo Labs, purpose: assistant }
apiKeys:
  header: x-api-key
  keys:
    - { name: billing-export, kind: job, team: finance, sha256: "${BILLING_EXPORT_KEY_SHA256}" }
identities:
  - rule: mesh-workloads
    name: "{ns}/{sa}"
    kind: service
    team: "{ns}"
    zone: cluster
    match: { spiffe: "spiffe://demo.local/ns/{ns}/sa/{sa}" }
  - rule: nightly-jobs
    name: "ci/{repo}"
    kind: job
    team: data
    expectEvery: 24h
    match: { jwt: { issuer: "${ISSUERS.github}", claims: { repository: "acme/{repo}" } } }
  - rule: in-cluster-services
    name: "{ns}/{sa}"
    kind: service
    team: "{ns}"
    zone: cluster
    match: { jwt: { issuer: "${ISSUERS.kubernetes}", claims: { kubernetes.io.namespace: "{ns}", kubernetes.io.serviceaccount.name: "{sa}" } } }
metrics:
  maxIdentities: 200
  idleTtl: 10m
  routes:
    - /api/v1/orders/:id
    - /api/v1/orders
    - /api/v1/inventory
    - /api/v1/reports/:name
    - /admin/*
    - /docs/*
    - /healthz
cost:
  currency: USD
  perRequest: 0.000002
  perGiB: 0.09
  perUpstreamSecond: 0.00005
audit:
  output: ${o.audit ? 'stdout' : 'off'}
  sample: 1.0
anomalies:
  tokenSharedPeers: 3
  tokenSharedWindow: 5m
  requireCertTokenMatch: true
policy:
  mode: observe
  rules:
    - name: admin-humans-only
      route: /admin/**
      allow: [{ kind: human, verified: true }, { team: ops }]
`
}
