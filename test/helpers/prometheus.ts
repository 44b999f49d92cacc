// A real Prometheus on loopback for the tests that scrape the sidecar through it, stopped (before its data
// directory is removed) at the end of the test.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Test } from 'tap'
import { eventually, GiveUp } from './eventually.ts'
import { freePort } from './net.ts'
import { scratchDirSync } from './scratch.ts'

export interface RunningPrometheus {
  /** http://127.0.0.1:PORT */
  base: string
  /** the last lines Prometheus logged (for failure messages) */
  log(): string
}

/**
 * Starts `bin` with the config `configFor(dir)` returns (`dir` is its own temporary directory, for rule files
 * the config names) and resolves once `/-/ready` answers.
 */
export async function startPrometheus(
  t: Test,
  bin: string,
  configFor: (dir: string) => string,
  readyTimeoutMs = 30_000,
): Promise<RunningPrometheus> {
  const dir = scratchDirSync('prometheus')
  const configFile = join(dir, 'prometheus.yml')
  writeFileSync(configFile, configFor(dir))
  const port = await freePort()
  const prom = spawn(
    bin,
    [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let log = ''
  prom.stderr.setEncoding('utf8')
  prom.stderr.on('data', (c: string) => {
    log = (log + c).slice(-4000)
  })
  const exited = once(prom, 'exit')
  t.teardown(async () => {
    if (prom.exitCode === null) prom.kill('SIGKILL')
    await exited
    rmSync(dir, { recursive: true, force: true })
  })
  const base = `http://127.0.0.1:${port}`
  await eventually(
    async () => {
      if (prom.exitCode !== null) throw new GiveUp(`prometheus exited: ${log}`)
      // the port was free a moment before the start: whatever answers must be this Prometheus, not a
      // listener that took the port meanwhile (Prometheus then exits on the busy port, reported above)
      const res = await fetch(`${base}/-/ready`)
      return res.ok && /Prometheus/.test(await res.text())
    },
    { timeoutMs: readyTimeoutMs, intervalMs: 200, what: 'prometheus ready' },
  )
  return { base, log: () => log }
}
