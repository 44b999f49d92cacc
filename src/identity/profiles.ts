// Built-in IdP knowledge (docs/reference.md "Built-in knowledge"): how each identity provider's verified claims name a workload or a person.
// Used for tokens no identity rule matched. Names are stable (built from immutable ids, never from display names).
import { type JwtEvidence, type Kind, PROFILE_NAMES, type ProfileName } from '../types.ts'
import { addDelegation } from './jwt/delegation.ts'
import { isSpiffeId } from './spiffe.ts'

export interface ProfileIdentity {
  name: string
  kind: Kind
  attributes: Record<string, string>
  /** unix seconds; kubernetes warnafter counts as expiry */
  expiresAt?: number
  /** "builtin:profile:<name>" */
  rule: string
}

type Claims = Readonly<Record<string, unknown>>
interface Classified {
  name: string
  kind: Kind
  attributes?: Record<string, string | undefined>
  expiresAt?: number
}
/** undefined: the token does not have this IdP's shape, fall back to generic */
type Profile = (claims: Claims, jwt: JwtEvidence) => Classified | undefined

const GITHUB_ISSUER = 'https://token.actions.githubusercontent.com'
const K8S_SUB = /^system:serviceaccount:([^:]+):([^:]+)$/
// Google's service accounts live under gserviceaccount.com (NAME@PROJECT.iam., PROJECT_NUMBER-compute@developer.,
// PROJECT@appspot., service agents @gcp-sa-*.iam. and the like): a subdomain, whole labels, since a domain
// that merely ends in the letters (iam-gserviceaccount.com) is anybody's
const GOOGLE_SERVICE_ACCOUNT =
  /^[a-z0-9][a-z0-9._-]*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+gserviceaccount\.com$/
const KEYCLOAK_SERVICE_ACCOUNT = 'service-account-'

function str(claims: Claims | undefined, key: string): string | undefined {
  const v = claims?.[key]
  if (typeof v === 'string') return v.length > 0 ? v : undefined
  if (typeof v === 'number' && Number.isFinite(v)) return String(v)
  return undefined
}

function num(claims: Claims | undefined, key: string): number | undefined {
  const v = claims?.[key]
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined
}

function obj(claims: Claims | undefined, key: string): Claims | undefined {
  const v = claims?.[key]
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Claims) : undefined
}

function list(claims: Claims, key: string): string | undefined {
  const v = claims[key]
  if (Array.isArray(v)) {
    const items = v.filter((x): x is string => typeof x === 'string')
    return items.length > 0 ? items.join(',') : undefined
  }
  return str(claims, key)
}

function issuerHost(iss: string): string {
  try {
    return new URL(iss).host || iss
  } catch {
    return iss
  }
}

/** the issuer URL's host name without a port ('' when it is no URL) */
function issuerHostname(iss: string): string {
  try {
    return new URL(iss).hostname
  } catch {
    return ''
  }
}

function clientId(claims: Claims): string | undefined {
  return str(claims, 'client_id') ?? str(claims, 'cid') ?? str(claims, 'appid') ?? str(claims, 'clientId')
}

/**
 * The client whose own service account a Keycloak token is, else undefined. Keycloak names that account
 * `service-account-<client id>` (lower-cased, as every Keycloak username) and writes the client id into the
 * token from the client-credentials grant's session (`client_id`; `clientId` in older releases), which a
 * person's login never has. A username alone proves nothing: people choose theirs (self-registration, email
 * as username), and `azp` is merely the client a person logged in through. Keycloak's service-account
 * tokens carry `email_verified: false` when the email scope is on, so the email claims do not tell them apart.
 */
function keycloakServiceAccount(claims: Claims): string | undefined {
  const id = str(claims, 'client_id') ?? str(claims, 'clientId')
  if (id === undefined || str(claims, 'preferred_username') !== KEYCLOAK_SERVICE_ACCOUNT + id.toLowerCase())
    return undefined
  const azp = str(claims, 'azp')
  return azp === undefined || azp === id ? id : undefined
}

/** a Google service account's address, when the token vouches for it (an unverified email proves nothing) */
function googleServiceAccount(claims: Claims): string | undefined {
  const email = str(claims, 'email')
  if (email === undefined || !GOOGLE_SERVICE_ACCOUNT.test(email)) return undefined
  const verified = claims['email_verified']
  return verified === true || verified === 'true' ? email : undefined
}

/** markers that a token was issued to an application (OAuth client credentials), not a person */
function isClientCredentials(claims: Claims): boolean {
  const sub = str(claims, 'sub')
  const cid = clientId(claims)
  return (
    str(claims, 'gty') === 'client-credentials' ||
    str(claims, 'grant_type') === 'client_credentials' ||
    str(claims, 'idtyp') === 'app' ||
    (sub !== undefined && (sub.endsWith('@clients') || sub === cid)) ||
    keycloakServiceAccount(claims) !== undefined ||
    googleServiceAccount(claims) !== undefined
  )
}

function looksLikePerson(claims: Claims): boolean {
  if (isClientCredentials(claims)) return false
  return ['email', 'preferred_username', 'upn', 'unique_name', 'given_name', 'family_name'].some(
    (k) => str(claims, k) !== undefined,
  )
}

function personAttributes(claims: Claims): Record<string, string | undefined> {
  return {
    email: str(claims, 'email'),
    preferred_username: str(claims, 'preferred_username'),
  }
}

function genericName(claims: Claims, jwt: JwtEvidence): string {
  const host = issuerHost(jwt.issuer)
  const id = str(claims, 'sub') ?? clientId(claims)
  return id ? `${host}/${id}` : host
}

/** a person, named by the stable subject id (display names and emails change; they go to attributes) */
function person(claims: Claims, jwt: JwtEvidence): Classified {
  return { name: genericName(claims, jwt), kind: 'human', attributes: personAttributes(claims) }
}

const generic: Profile = (claims, jwt) =>
  looksLikePerson(claims) ? person(claims, jwt) : { name: genericName(claims, jwt), kind: 'service' }

const kubernetes: Profile = (claims) => {
  const k8s = obj(claims, 'kubernetes.io')
  const fromSub = K8S_SUB.exec(str(claims, 'sub') ?? '')
  const ns = str(k8s, 'namespace') ?? fromSub?.[1]
  const sa = str(obj(k8s, 'serviceaccount'), 'name') ?? fromSub?.[2]
  if (!ns || !sa) return undefined
  const warnafter = num(k8s, 'warnafter')
  const exp = num(claims, 'exp')
  const expiresAt =
    warnafter !== undefined && exp !== undefined ? Math.min(warnafter, exp) : (warnafter ?? exp)
  return {
    name: `${ns}/${sa}`,
    kind: 'service',
    attributes: {
      ns,
      sa,
      sa_uid: str(obj(k8s, 'serviceaccount'), 'uid'),
      pod: str(obj(k8s, 'pod'), 'name'),
      pod_uid: str(obj(k8s, 'pod'), 'uid'),
      node: str(obj(k8s, 'node'), 'name'),
    },
    ...(expiresAt !== undefined ? { expiresAt } : {}),
  }
}

const githubActions: Profile = (claims) => {
  const repository = str(claims, 'repository')
  if (!repository) return undefined
  const attributes: Record<string, string | undefined> = {}
  for (const k of [
    'repository',
    'repository_owner',
    'workflow',
    'workflow_ref',
    'job_workflow_ref',
    'ref',
    'ref_type',
    'sha',
    'run_id',
    'run_attempt',
    'event_name',
    'environment',
    'runner_environment',
  ]) {
    attributes[k] = str(claims, k)
  }
  // the user who triggered the run: not an actor in RFC 8693's sense (an agent acting on the job's behalf),
  // whose `actor` attribute the live view, /identities and the audit show as "actor on behalf of identity"
  attributes['github_actor'] = str(claims, 'actor')
  return { name: `github/${repository}`, kind: 'job', attributes }
}

const auth0: Profile = (claims, jwt) => {
  const sub = str(claims, 'sub') ?? ''
  // user access tokens: sub "<connection>|<user id>", usually without email
  if (str(claims, 'gty') !== 'client-credentials' && !sub.endsWith('@clients')) return person(claims, jwt)
  const id = str(claims, 'azp') ?? (sub.endsWith('@clients') ? sub.slice(0, -'@clients'.length) : sub)
  if (!id) return undefined
  return { name: id, kind: 'service', attributes: { scope: str(claims, 'scope') } }
}

const azureAd: Profile = (claims, jwt) => {
  const idtyp = str(claims, 'idtyp')
  const scp = str(claims, 'scp')
  const user =
    idtyp === 'user' || (idtyp !== 'app' && (str(claims, 'upn') ?? str(claims, 'preferred_username') ?? scp))
  const tenant = { tid: str(claims, 'tid'), oid: str(claims, 'oid') }
  if (user)
    return {
      ...person(claims, jwt),
      attributes: { ...personAttributes(claims), ...tenant, upn: str(claims, 'upn') },
    }
  const app = idtyp === 'app' || Array.isArray(claims['roles'])
  const id = str(claims, 'azp') ?? str(claims, 'appid')
  if (!app || !id) return undefined
  return { name: id, kind: 'service', attributes: { ...tenant, appid: id, roles: list(claims, 'roles') } }
}

const okta: Profile = (claims, jwt) => {
  const cid = str(claims, 'cid')
  const sub = str(claims, 'sub')
  // user access tokens: sub is the login, uid the user id
  if (!cid || sub !== cid)
    return { ...person(claims, jwt), attributes: { ...personAttributes(claims), uid: str(claims, 'uid') } }
  return { name: cid, kind: 'service', attributes: { scp: list(claims, 'scp') } }
}

const keycloak: Profile = (claims, jwt) => {
  const id = keycloakServiceAccount(claims)
  if (id === undefined) return person(claims, jwt)
  return { name: id, kind: 'service', attributes: { preferred_username: str(claims, 'preferred_username') } }
}

const google: Profile = (claims, jwt) => {
  const email = googleServiceAccount(claims)
  if (email === undefined) return person(claims, jwt)
  return { name: email, kind: 'service', attributes: { email } }
}

const spiffe: Profile = (claims) => {
  const sub = str(claims, 'sub')
  // read as a certificate's URI SAN is (the standard's characters and its 2048- and 255-byte bounds): a name
  // one credential may carry and another may not would be two readings of one workload's ID
  if (!sub || !isSpiffeId(sub)) return undefined
  return { name: sub, kind: 'service', attributes: { spiffe_id: sub } }
}

const PROFILES: Record<ProfileName, Profile> = {
  kubernetes,
  'github-actions': githubActions,
  auth0,
  'azure-ad': azureAd,
  okta,
  keycloak,
  google,
  spiffe,
  generic,
}

// Where clusters' service-account tokens come from: the in-cluster issuer (kubernetes.default.svc, with any
// cluster domain), the legacy secret-based tokens' literal `kubernetes/serviceaccount`, and the managed
// clusters' issuers (EKS, GKE, AKS)
const K8S_ISSUER_HOST =
  /^(?:kubernetes\.default\.svc(?:\.[a-z0-9.-]+)?|oidc\.eks\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?|container\.googleapis\.com|[a-z0-9-]+\.oic\.prod-aks\.azure\.com)$/
const K8S_LEGACY_ISSUER = 'kubernetes/serviceaccount'

/**
 * For issuers configured without a profile: the profile is guessed from the issuer URL alone. The claims
 * are the issuer's to choose, so guessing from them would let any configured issuer (a partner's IdP) mint
 * the names another one owns: a `sub` of `system:serviceaccount:prod:payments` would be the cluster's own
 * `prod/payments`, a `spiffe://` subject a mesh certificate's name. Such tokens from an issuer this does not
 * recognise are read with the generic profile, named under the issuer's host; a cluster at another issuer
 * URL, and a JWT-SVID issuer (whose URL is the operator's choice), set `profile`.
 */
export function detectProfile(jwt: JwtEvidence): ProfileName {
  return issuerProfile(jwt.issuer)
}

/** detectProfile for an issuer URL: the profile its tokens are read with unless one is configured. */
export function issuerProfile(iss: string): ProfileName {
  const host = issuerHost(iss)
  if (iss === K8S_LEGACY_ISSUER || K8S_ISSUER_HOST.test(issuerHostname(iss))) return 'kubernetes'
  if (iss === GITHUB_ISSUER) return 'github-actions'
  if (iss === 'https://accounts.google.com' || iss === 'accounts.google.com') return 'google'
  if (host === 'login.microsoftonline.com' || host === 'sts.windows.net') return 'azure-ad'
  if (host.endsWith('.auth0.com')) return 'auth0'
  if (host.endsWith('.okta.com') || host.endsWith('.oktapreview.com')) return 'okta'
  if (/\/realms\/[^/]+\/?$/.test(iss)) return 'keycloak'
  return 'generic'
}

/**
 * IdPs that give a token to anyone who asks, for any audience: any repository on GitHub gets an Actions
 * token, any Google account or service account an ID token. Their verified names are chosen by outsiders as
 * freely as a user agent, so their issuers get a bounded share of the identity table by default. Only the
 * public issuer URLs are detected as these profiles (issuerProfile), and the default goes by that alone.
 */
export const PUBLIC_PROFILES: ReadonlySet<ProfileName> = new Set<ProfileName>(['github-actions', 'google'])

function isProfileName(p: string | undefined): p is ProfileName {
  return p !== undefined && (PROFILE_NAMES as readonly string[]).includes(p)
}

/** The profile a token is read with: its issuer's `profile`, else the one its issuer URL suggests. */
export function tokenProfile(jwt: JwtEvidence): ProfileName {
  return isProfileName(jwt.profile) ? jwt.profile : detectProfile(jwt)
}

/**
 * What the names of an issuer's tokens are unique within, for `check`: two issuers with the same namespace
 * can name a caller alike, so either one can mint the names the other's callers have. Services of the
 * kubernetes (`ns/sa`), keycloak, okta and auth0 (client ids) and spiffe (the subject) profiles are named
 * without their issuer; every other name starts with the issuer's host. GitHub's and Google's names are
 * global (one issuer each), and Microsoft's app ids are its own, so theirs are left out.
 */
export function issuerNamespace(iss: string, profile: ProfileName | undefined): string | undefined {
  const applied = profile ?? issuerProfile(iss)
  if (applied === 'github-actions' || applied === 'google' || applied === 'azure-ad') return undefined
  if (applied === 'kubernetes' || applied === 'keycloak' || applied === 'okta' || applied === 'auth0')
    return `the ${applied} profile's names`
  if (applied === 'spiffe') return 'JWT-SVID subjects'
  return `names under ${issuerHost(iss)}/`
}

/** Identity for a verified token that no identity rule matched. */
export function profileIdentity(jwt: JwtEvidence): ProfileIdentity {
  const claims = jwt.claims
  const profile = tokenProfile(jwt)
  const specific = PROFILES[profile](claims, jwt)
  const applied: ProfileName = specific ? profile : 'generic'
  const result = specific ?? generic(claims, jwt)!

  const attributes: Record<string, string> = {}
  const common: Record<string, string | undefined> = {
    iss: jwt.issuer,
    sub: str(claims, 'sub'),
    aud: list(claims, 'aud'),
    client_id: clientId(claims),
    azp: str(claims, 'azp'),
    jti: str(claims, 'jti'),
    ...result.attributes,
  }
  // for-in, not Object.entries: every never-seen token comes here, and the entry arrays were ≈ 0.8 KB of it
  for (const k in common) {
    const v = common[k]
    if (v !== undefined) attributes[k] = v
  }
  addDelegation(claims, result.name, attributes)

  const identity: ProfileIdentity = {
    name: result.name,
    kind: result.kind,
    attributes,
    rule: `builtin:profile:${applied}`,
  }
  const expiresAt = result.expiresAt ?? jwt.exp
  if (expiresAt !== undefined) identity.expiresAt = expiresAt
  return identity
}
