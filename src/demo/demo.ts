// `nhi-proxy demo`: a built-in upstream, local identity providers and synthetic callers of every kind,
// all on loopback, through the real proxy with a real (embedded) config. Needs no files and no network.
import type { Logger } from 'pino'
import { formatDiagnostic, parseConfigText } from '../config/loader.ts'
import { type Sidecar, startSidecar } from '../runtime.ts'
import { StartupError, splitAddress } from '../startup.ts'
import { listenProblem } from '../util/listen-problem.ts'
import { demoConfigYaml } from './config.ts'
import { DemoIdp } from './idp.ts'
import { caCert, serverCert, serverKey } from './pki.ts'
import { DemoTraffic } from './traffic.ts'
import { startDemoUpstream } from './upstream.ts'

export interface DemoOptions {
  listen: string
  https: string
  admin: string
  /** demo identity provider: JWKS and sample tokens */
  idp: string
  rate: number
  audit: boolean
  log: Logger
  print: (line: string) => void
}

export interface Demo {
  sidecar: Sidecar
  traffic: DemoTraffic
  close(): Promise<void>
}

function url(a: { address: string; port: number }, scheme = 'http'): string {
  const host = a.address === '0.0.0.0' || a.address === '::' ? '127.0.0.1' : a.address
  return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${a.port}`
}

// the demo's fixed default ports are most often taken by a demo started earlier (a second `npm start`)
const PORTS_HINT =
  ' (is another nhi-proxy demo running? choose other ports with --listen, --https, --admin, --idp)'

export async function runDemo(o: DemoOptions): Promise<Demo> {
  const idpAddr = splitAddress(o.idp)
  const upstream = await startDemoUpstream()
  let idp: DemoIdp
  try {
    idp = await DemoIdp.start(idpAddr.host, idpAddr.port)
  } catch (err) {
    await upstream.close()
    const e = err as NodeJS.ErrnoException
    if (e.code === 'EADDRINUSE')
      throw new StartupError(`cannot listen on ${o.idp}: address in use${PORTS_HINT}`, 2)
    throw new StartupError(`cannot listen on ${o.idp}: ${listenProblem(e)}`, 2)
  }
  const yaml = demoConfigYaml({
    ...o,
    upstream: upstream.url,
    jwksUri: idp.jwksUri,
    directoryUrl: idp.directoryUrl,
  })
  const parsed = parseConfigText(yaml, '<demo>')
  if (!parsed.ok) throw new StartupError(parsed.errors.map(formatDiagnostic).join('\n'), 1)

  let sidecar: Sidecar
  try {
    sidecar = await startSidecar({
      config: parsed.config,
      tls: { cert: serverCert, key: serverKey, ca: caCert },
      log: o.log,
    })
  } catch (err) {
    await Promise.all([upstream.close(), idp.close()])
    if (err instanceof StartupError && err.message.endsWith('address in use'))
      throw new StartupError(`${err.message}${PORTS_HINT}`, err.exitCode)
    throw err
  }
  const proxyUrl = url(sidecar.proxyAddress)
  const httpsUrl = sidecar.httpsAddress ? url(sidecar.httpsAddress, 'https') : undefined
  const admin = url(sidecar.adminAddress)
  const traffic = new DemoTraffic({ proxyUrl, httpsUrl, idp, rate: o.rate })
  await traffic.runEveryScenarioOnce()
  await traffic.start()

  o.print(
    [
      '',
      'nhi-proxy demo is running: synthetic humans, services, jobs, crawlers and AI agents',
      'are calling a built-in upstream through the proxy.',
      '',
      `  live view     ${admin}/ui`,
      `  metrics       ${admin}/metrics`,
      `  identities    ${admin}/identities`,
      `  audit trail   ${admin}/audit?limit=20`,
      `  proxy         ${proxyUrl}   (mTLS: ${httpsUrl ?? 'off'})`,
      `  sample tokens ${idp.tokensUrl}/{kubernetes,github,auth0-client,auth0-user,delegated,expired,unknown-kid,bound}`,
      '',
      `Try: curl -s ${proxyUrl}/docs/x -A 'GPTBot/1.2' -o /dev/null && curl -s ${admin}/identities | head -c 600`,
      'Ctrl-C stops the demo.',
      '',
    ].join('\n'),
  )

  return {
    sidecar,
    traffic,
    async close() {
      await traffic.close()
      await sidecar.close()
      await Promise.all([upstream.close(), idp.close()])
    },
  }
}
