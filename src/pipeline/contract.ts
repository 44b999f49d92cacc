// The contract between the proxy (accept/forward) and everything else (identify → classify → decide → record).
// The proxy holds a `() => Pipeline` so a config reload swaps the whole pipeline atomically between requests.
// index.ts implements it.
import type { Rejection } from '../identity/sources/source.ts'
import type {
  ConnectionInfo,
  EvidenceSet,
  Identity,
  MaybePromise,
  PolicyDecision,
  RequestEvent,
  RequestInfo,
} from '../types.ts'

export interface Attribution {
  identity: Identity
  evidence: EvidenceSet
  decision: PolicyDecision
  /** bounded route label (configured template or "other") */
  route: string
  /** sha256 prefixes of the presented credentials (the request event's `fingerprints`) */
  fingerprints?: RequestEvent['fingerprints']
  /** when set, the proxy answers with this instead of forwarding (401 invalid token, 403 policy deny) */
  reject?: Rejection
}

export interface Pipeline {
  /** the service name this sidecar fronts (metric label `service`) */
  readonly service: string
  /**
   * identify → classify → decide. Must not throw for any client input. Returns the attribution directly when
   * nothing had to wait (the common case), a promise otherwise.
   */
  attribute(req: RequestInfo, conn: ConnectionInfo): MaybePromise<Attribution>
  /** called once per request after the response has ended (or failed) */
  record(event: RequestEvent): void
  /**
   * The policy is enforced (`policy.mode: enforce`): a request attribute() failed for (it threw or rejected,
   * a bug) is answered 500 rather than forwarded as anonymous without the policy having decided it.
   */
  readonly failClosed?: boolean
  /**
   * Normalized names of the headers this pipeline's sources read credentials from beyond the proxy's fixed
   * list (authorization, x-api-key…), and of those it reads under one name (the user agent, the signature
   * headers, those its identity rules match): the proxy never forwards a request trailer of those names.
   */
  readonly withheldTrailers?: ReadonlySet<string>
  /**
   * Whether the direct peer is one of `forwardedClientCert.trustedProxies`, whose x-forwarded-proto and
   * x-forwarded-host are kept (in front of this hop's own) rather than replaced, and whose client-address
   * headers (x-real-ip and the like) are forwarded rather than dropped.
   */
  trustedProxy?(remoteAddress: string): boolean
  /**
   * The address a request comes from: the direct peer, or, when the peer is a trusted proxy, the client it
   * appended to X-Forwarded-For (what the audit and the OTLP span call the client address), as the stages
   * worked it out for the request (`req.client`) when one did.
   */
  clientAddress?(req: RequestInfo, remoteAddress: string): string
  /**
   * Last word on the headers sent upstream (after the proxy has stripped hop-by-hop and x-nhi-* headers and
   * set the identity headers): removes forwarded-certificate headers from untrusted peers, or rewrites them.
   */
  prepareUpstreamHeaders?(
    headers: Record<string, string | string[] | undefined>,
    attribution: Attribution,
    conn: ConnectionInfo,
  ): void
}
