// One request read to its end, over plain HTTP or TLS (`https: true`), for tests that need the status and
// the whole body of a single exchange without an agent's pooling.
import { type IncomingHttpHeaders, request } from 'node:http'
import { request as httpsRequest, type RequestOptions } from 'node:https'

export interface Answer {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

export function exchange(options: RequestOptions & { https?: boolean }): Promise<Answer> {
  const { https, ...rest } = options
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : request)({ agent: false, ...rest }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** GET /echo from the sidecar's https listener at `port` (its certificate for `localhost`), presenting `client` */
export function mtlsEcho(
  port: number,
  serverCaPem: string,
  client: { certPem: string; keyPem: string },
): Promise<Answer> {
  return exchange({
    https: true,
    host: '127.0.0.1',
    port,
    path: '/echo',
    servername: 'localhost',
    ca: serverCaPem,
    cert: client.certPem,
    key: client.keyPem,
  })
}
