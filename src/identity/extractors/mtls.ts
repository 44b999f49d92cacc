// The TLS client certificate: parsed once per connection by the listener (certificate.ts), reused here.
import type { Extractor } from '../../types.ts'

export const mtlsExtractor: Extractor = {
  source: 'mtls',
  extract(_req, conn) {
    return conn.peerCert
  },
}
