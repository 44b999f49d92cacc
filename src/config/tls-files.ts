// `check` reads the TLS files of the https listener and of upstreamTls through the loaders the start and every
// rotation use, so that what would stop `run` (a file that is not PEM, a key for another certificate, an
// encrypted key) is reported by `check` too, at the setting that names the file. A certificate outside its
// dates does not stop the start (a rotation may be on its way) and is a warning.
import {
  certificateOutOfDates,
  loadListenerTls,
  loadUpstreamTls,
  TlsMaterialError,
} from '../proxy/listener-tls.ts'
import type { Config } from './schema.ts'
import type { SemanticIssue } from './semantic.ts'
import type { Path } from './yaml-schema.ts'

interface TlsSet {
  section: Path
  files: Record<string, string | undefined>
  /** reads and checks the set as the start does; the certificate's PEM when there is one */
  load: () => Promise<string | undefined>
  /** who refuses the certificate once it is outside its dates */
  refusedBy: string
}

function tlsSets(config: Config): TlsSet[] {
  const sets: TlsSet[] = []
  const https = config.listen.https
  if (https) {
    const files = { cert: https.cert, key: https.key, clientCA: https.clientCA }
    sets.push({
      section: ['listen', 'https'],
      files,
      load: async () => (await loadListenerTls(files)).cert,
      refusedBy: 'clients that verify the server certificate refuse the connection',
    })
  }
  const upstreamTls = config.upstreamTls
  if (upstreamTls && (upstreamTls.ca ?? upstreamTls.cert ?? upstreamTls.key) !== undefined) {
    const files = { ca: upstreamTls.ca, cert: upstreamTls.cert, key: upstreamTls.key }
    sets.push({
      section: ['upstreamTls'],
      files,
      load: async () => {
        const cert = (await loadUpstreamTls(files)).cert
        return typeof cert === 'string' ? cert : undefined
      },
      refusedBy: 'an upstream that verifies client certificates refuses it',
    })
  }
  return sets
}

/**
 * The problems of each TLS set whose files are all `present` (a missing one is reported as such, and a set
 * mounted only where the sidecar runs is not read here).
 */
export async function tlsFileIssues(
  config: Config,
  present: (file: string) => boolean,
  now = Date.now(),
): Promise<SemanticIssue[]> {
  const issues: SemanticIssue[] = []
  for (const set of tlsSets(config)) {
    const named = Object.values(set.files).filter((f): f is string => f !== undefined)
    if (!named.every(present)) continue
    let cert: string | undefined
    try {
      cert = await set.load()
    } catch (err) {
      if (!(err instanceof TlsMaterialError)) throw err
      const setting = err.setting in set.files ? err.setting : 'cert'
      issues.push({
        path: [...set.section, setting],
        message: `${err.setting} "${err.file}": ${err.message}`,
        hint: 'run refuses to start with it',
        severity: 'error',
      })
      continue
    }
    const problem = cert === undefined ? undefined : certificateOutOfDates(cert, now)?.reason
    if (problem !== undefined) {
      issues.push({
        path: [...set.section, 'cert'],
        message: `cert "${set.files['cert']}": ${problem}`,
        hint: `run starts with it, but ${set.refusedBy}`,
        severity: 'warning',
      })
    }
  }
  return issues
}
