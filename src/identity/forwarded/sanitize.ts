// What the proxy sends upstream about forwarded client certificates (see headers.ts).
export { formatXfcc, sanitizeForwardedCertHeaders } from './headers.ts'
