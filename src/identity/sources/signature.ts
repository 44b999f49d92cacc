// Signed agents (signedAgents): HTTP Message Signatures (RFC 9421, Web Bot Auth) verified against configured
// key directories (identity/signatures). Weaker than an api key, stronger than what a user agent says: a
// verified directory's operator and purpose replace the user agent's claim, also when the entry names none.
import type { SignatureEvidence } from '../../types.ts'
import { AUTHORITY_HINT, parseAuthority } from '../signatures/authorities.ts'
import { SignatureVerifier } from '../signatures/verifier.ts'
import type { CredentialSource } from './source.ts'

export const signatureSource: CredentialSource<SignatureEvidence> = {
  name: 'signature',
  precedence: 45,
  // like tokens without issuers: without configured directories a signature is the service's business
  create: (config, ctx) =>
    config.signedAgents.directories.length > 0
      ? new SignatureVerifier(config.signedAgents, {
          observer: ctx.jwksObserver,
          now: ctx.now,
          nonces: ctx.nonces,
          keyMemory: ctx.keyMemory,
        })
      : undefined,
  attributes(sig, a) {
    a['signature_agent'] ??= sig.directory
    a['signature_keyid'] ??= sig.keyid
    if (sig.operator) a['agent_operator'] ??= sig.operator
    if (sig.purpose) a['agent_purpose'] ??= sig.purpose
  },
  defaultKind: (sig) => sig.kind,
  builtinIdentity: (sig) => ({ name: sig.name, kind: sig.kind, rule: 'builtin:signature' }),
  cacheKey: (sig) => `${sig.directory} ${sig.keyid}`,
  describe: (sig) => `verified directory=${sig.directory} keyid=${sig.keyid}`,
  checkConfig(config, error, warn) {
    const sa = config.signedAgents
    sa.authorities.forEach((raw, i) => {
      const parsed = parseAuthority(raw)
      if ('error' in parsed) error(['signedAgents', 'authorities', i], parsed.error, AUTHORITY_HINT)
    })
    if (sa.directories.length > 0 && sa.authorities.length === 0) {
      warn(
        ['signedAgents', 'directories'],
        'signedAgents.authorities is empty: a signature an agent made for another site would verify here ' +
          "(that site's operator can send it on within its validity window)",
        'set signedAgents.authorities to the host names this service is reached by, e.g. [shop.example]',
        'key',
      )
    }
  },
}
