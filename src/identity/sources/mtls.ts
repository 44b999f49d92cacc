// The TLS client certificate: parsed and chain-checked once per connection by the listener
// (identity/certificate.ts), read here from the connection.
import type { CertEvidence } from '../../types.ts'
import { certificateParts } from './certificate.ts'
import type { CredentialSource } from './source.ts'

export const mtlsSource: CredentialSource<CertEvidence> = {
  name: 'mtls',
  precedence: 10,
  ...certificateParts,
  create: () => ({ extract: (_req, conn) => conn.peerCert }),
}
