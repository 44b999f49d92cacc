// TLS files that rotate while the sidecar serves: the https listener's (listen.https) and those of https:/h2:
// upstreams (upstreamTls). A set is read again on every reload and when one of its files changes on disk;
// connections opened afterwards get what it holds, established ones keep theirs. A set that no longer loads
// leaves the previous one in use, and the operator is told which file and why; it is read again every
// RETRY_MS until it loads, so a rotation refused once (a key written after its certificate, whose change was
// coalesced with it) still applies, and the refusals keep being counted while the old files serve. The
// listener also refuses a certificate outside its dates: serving an expired one (or one not valid yet) fails
// every handshake, where the previous one may still have days left.
import { resolve } from 'node:path'
import type { Logger } from 'pino'
import { serializeReloads, watchConfig } from './config/watch.ts'
import { certificateOutOfDates, chainValidity, TlsMaterialError } from './proxy/listener-tls.ts'
import type { Telemetry } from './telemetry/index.ts'
import type { TlsSide } from './telemetry/metrics.ts'
import type { CertificateValidity } from './types.ts'

/** each side's setting prefix and words */
const SIDES = {
  listener: {
    section: 'listen.https',
    owner: 'the https listener',
    kept: 'serving the previous certificate',
    reloaded: 'https listener certificate reloaded',
  },
  upstream: {
    section: 'upstreamTls',
    owner: 'upstreamTls',
    kept: 'upstream connections keep the previous TLS files',
    reloaded: 'upstream TLS files reloaded',
  },
} as const satisfies Record<TlsSide, unknown>

/** a refused TLS file in the config's words (`upstreamTls.ca "ca.pem": …`), the same at start and on rotation */
export function tlsRefusal(side: TlsSide, err: TlsMaterialError) {
  const setting = `${SIDES[side].section}.${err.setting}`
  return { setting, file: err.file, reason: err.message, text: `${setting} "${err.file}": ${err.message}` }
}

/** how often a set that was refused is read again, well within NhiTlsRotationFailing's 15-minute window */
const RETRY_MS = 30_000

interface TlsContents {
  cert?: unknown
  key?: unknown
  ca?: unknown
}

export interface RotatingTlsFiles<F extends Record<keyof F, string | undefined>, T extends TlsContents> {
  side: TlsSide
  /**
   * the files as named at start, by setting, cert first: all are watched, and all but the key are named
   * when they are reloaded
   */
  files: F
  /** what the files held at start */
  serving: TlsContents
  load: (files: F) => Promise<T>
  apply: (next: T) => void
  /** how often a refused set is read again (default 30 s) */
  retryMs?: number
  /**
   * refuse a new certificate that has expired or is not valid yet (beyond a little clock skew): the one
   * being served is no worse, and may still be valid
   */
  refuseOutOfDates?: boolean
}

const certificateValidity = (files: TlsContents): CertificateValidity | undefined =>
  typeof files.cert === 'string' ? chainValidity(files.cert) : undefined

export function rotateTlsFiles<F extends Record<keyof F, string | undefined>, T extends TlsContents>(
  o: RotatingTlsFiles<F, T>,
  log: Logger,
  telemetry: Pick<Telemetry, 'tlsFiles' | 'tlsReloaded'>,
): { reload: () => Promise<void>; close: () => void } {
  const files: Record<string, string | undefined> = o.files
  const named = Object.entries(files).filter((e): e is [string, string] => e[1] !== undefined)
  // a failure the checks did not word is put on the certificate, or on the only file there is
  const blamed = files['cert'] ?? named[0]?.[1] ?? ''
  const logged = Object.fromEntries(named.filter(([setting, file]) => setting !== 'key' && file !== ''))
  const words = SIDES[o.side]
  let serving = o.serving
  let retry: NodeJS.Timeout | undefined
  let closed = false
  const refused = (): void => {
    telemetry.tlsReloaded(o.side, 'failure')
    // no file event may come again (cert-manager writes a renewed Secret once): read it again until it loads
    if (!closed) {
      retry = setTimeout(() => void reload(), o.retryMs ?? RETRY_MS)
      retry.unref()
    }
  }
  const reload = serializeReloads(async (): Promise<void> => {
    clearTimeout(retry)
    retry = undefined
    if (closed) return
    let next: T
    try {
      next = await o.load(o.files)
    } catch (e) {
      const err =
        e instanceof TlsMaterialError ? e : new TlsMaterialError('cert', blamed, (e as Error).message)
      const { setting, file, reason, text } = tlsRefusal(o.side, err)
      log.error({ event: 'tls_reload_failed', side: o.side, setting, file, reason }, `${text}; ${words.kept}`)
      refused()
      return
    }
    if (next.cert === serving.cert && next.key === serving.key && next.ca === serving.ca) return
    // the certificate the files held already is kept whatever its dates: a client CA rotates on its own
    const dates =
      o.refuseOutOfDates && next.cert !== serving.cert && typeof next.cert === 'string'
        ? certificateOutOfDates(next.cert, Date.now())
        : undefined
    if (dates) {
      const { setting, file, text } = tlsRefusal(o.side, new TlsMaterialError('cert', blamed, dates.reason))
      const { event, notBefore, notAfter } = dates
      log.warn({ event, side: o.side, setting, file, notBefore, notAfter }, `${text}; ${words.kept}`)
      refused()
      return
    }
    o.apply(next)
    serving = next
    telemetry.tlsFiles(o.side, certificateValidity(next))
    telemetry.tlsReloaded(o.side, 'success')
    log.info({ event: 'tls_reloaded', side: o.side, ...logged }, words.reloaded)
  })
  telemetry.tlsFiles(o.side, certificateValidity(serving))
  const watchers = named.map(([, file]) =>
    watchConfig(resolve(file), () => void reload(), {
      onError: (_message, err) =>
        log.warn(
          { err, file },
          `cannot watch a TLS file of ${words.owner}; a reload (SIGHUP) still reads it`,
        ),
    }),
  )
  return {
    reload,
    close: () => {
      closed = true
      clearTimeout(retry)
      for (const w of watchers) w.close()
    },
  }
}
