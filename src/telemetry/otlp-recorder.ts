// The OTLP output. Export is on or off, and aimed where, by the config's `otlp` block and the OTEL_*
// variables (otlp-settings.ts); every reconfigure (start, then each reload) compares the resulting settings
// with the running ones and, when they differ, starts a new export and retires the old one, so turning export
// on or off or moving the collector needs no restart. Each export is a thread of its own (otlp-thread.ts)
// that alone loads the SDK (otlp.ts), and only once export is on. At most one retired export sends what it
// had queued alongside the running one (retire).
import type { Config } from '../config/schema.ts'
import type { Recorder, RequestEvent } from '../types.ts'
import type { OtlpCounts } from './otlp.ts'
import type { OtlpSettings } from './otlp-settings.ts'
import { otlpSettings } from './otlp-settings.ts'
import type { OtlpThread } from './otlp-thread.ts'

type Env = Record<string, string | undefined>

const zero = (): OtlpCounts => ({ exported: 0, queueFull: 0, exportFailed: 0 })

export class OtlpRecorder implements Recorder {
  readonly name = 'otlp'
  private export: OtlpThread | undefined
  private settings: OtlpSettings | undefined
  /** what the settings of the running export serialise to; undefined while export is off */
  private key: string | undefined
  /** bumped by every reconfigure: a slower earlier one must not install its export over a later one's */
  private generation = 0
  /** retired exports still sending what they had queued (one), or being cut short (retire) */
  private readonly retiring = new Map<OtlpThread, Promise<void>>()
  private readonly spanCounts = zero()
  private readonly logCounts = zero()

  /** told when an export thread died (it is restarted; what it held is counted as export_failed) */
  onThreadExit: ((error: string) => void) | undefined
  /**
   * told once when the SDK refuses the settings (no thread is restarted; records are counted as export_failed
   * until a reload changes the settings)
   */
  onThreadUnusable: ((error: string) => void) | undefined

  constructor(
    private readonly version: string,
    private readonly env: Env = process.env,
  ) {}

  /** where spans go (for the log), undefined while export is off */
  get target(): string | undefined {
    return this.settings?.target
  }

  /** span counts while export is on */
  get spans(): OtlpCounts | undefined {
    return this.settings ? this.spanCounts : undefined
  }

  /** audit log record counts while log export is on */
  get logs(): OtlpCounts | undefined {
    return this.settings?.logs ? this.logCounts : undefined
  }

  record(event: RequestEvent): void {
    this.export?.record(event)
  }

  async reconfigure(config: Config): Promise<void> {
    const generation = ++this.generation
    const settings = otlpSettings(config, this.env)
    const key = settings && JSON.stringify(settings)
    if (key === this.key) return
    let next: OtlpThread | undefined
    if (settings) {
      const { OtlpThread } = await import('./otlp-thread.ts')
      if (generation !== this.generation) return
      next = new OtlpThread({
        settings,
        version: this.version,
        counts: { spans: this.spanCounts, logs: this.logCounts },
        onExit: (error) => this.onThreadExit?.(error),
        onUnusable: (error) => this.onThreadUnusable?.(error),
      })
    }
    const previous = this.export
    this.export = next
    this.settings = settings
    this.key = key
    if (previous) this.retire(previous)
  }

  /**
   * The old export sends what it has queued (bounded by its close) while requests go to the new one. A retired
   * export is a thread with an SDK, a heap and full queues for up to 6 s while the collector hangs: reloads in
   * quick succession (a rotating collector token) piled them up, some 15 MB each. So a retirement cuts the one
   * before it short, which had the time since its own retirement to send; what it still holds is counted as
   * export_failed.
   */
  private retire(previous: OtlpThread): void {
    for (const older of this.retiring.keys()) older.abort()
    const closing = previous.close().finally(() => this.retiring.delete(previous))
    this.retiring.set(previous, closing)
  }

  async close(): Promise<void> {
    this.generation++
    const current = this.export
    this.export = undefined
    this.settings = undefined
    this.key = undefined
    await Promise.all([current?.close(), ...this.retiring.values()])
  }
}
