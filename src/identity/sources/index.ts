// The credential sources, in the order their readers run (cheap, synchronous ones first; precedence is each
// source's own). The only list of them: a new source is its own file plus one line here.

import { FAILURE_REASONS } from '../../types.ts'
import { apiKeySource } from './apikey.ts'
import { forwardedCertSource } from './forwarded-cert.ts'
import { jwtSource } from './jwt.ts'
import { mtlsSource } from './mtls.ts'
import { signatureSource } from './signature.ts'
import type { CredentialSource } from './source.ts'
import { userAgentSource } from './useragent.ts'

export const CREDENTIAL_SOURCES: readonly CredentialSource[] = [
  mtlsSource,
  forwardedCertSource,
  apiKeySource,
  userAgentSource,
  signatureSource,
  jwtSource,
] as CredentialSource[]

/** What an identity's `source` can be: a source's name, or "anonymous" when nothing was presented. */
export const SOURCE_NAMES: readonly string[] = [
  ...[...CREDENTIAL_SOURCES].sort((a, b) => a.precedence - b.precedence).map((s) => s.name),
  'anonymous',
]

/** Every reason a failure can carry: the shared ones and each source's own. */
export const ALL_FAILURE_REASONS: readonly string[] = [
  ...new Set([...FAILURE_REASONS, ...CREDENTIAL_SOURCES.flatMap((s) => s.failureReasons ?? [])]),
]

/** The registered source of that name (`nhi-proxy test` builds evidence by source). */
export function sourceNamed(name: string): CredentialSource {
  const s = CREDENTIAL_SOURCES.find((x) => x.name === name)
  if (!s) throw new Error(`no credential source named ${name}`)
  return s
}
