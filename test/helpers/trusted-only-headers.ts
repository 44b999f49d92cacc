// The headers by which a proxy names the client's address, or states what the request was before it (its
// scheme and port, a stripped prefix, a rewritten URL, a forward-auth check's method and URI), as the docs list
// them ("Headers"): forwarded from a trusted proxy only, dropped from anyone else. Written out here rather than
// imported from the proxy, so that a name the proxy stops dropping fails the tests that use the list.
export const TRUSTED_ONLY_HEADERS: readonly string[] = [
  'x-real-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'x-client-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
  'client-ip',
  'x-forwarded-port',
  'x-forwarded-ssl',
  'x-forwarded-scheme',
  'x-url-scheme',
  'front-end-https',
  'x-forwarded-prefix',
  'x-original-url',
  'x-rewrite-url',
  'x-original-uri',
  'x-forwarded-path',
  'x-forwarded-uri',
  'x-forwarded-method',
  'x-original-method',
]
