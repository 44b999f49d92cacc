// Helpers for the `workers: N` tests: the workers' pids, and requests that land on every worker (the cluster
// hands each new connection to the next worker) with the identity each was served as, from the audit file.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { eventually } from './eventually.ts'
import { scratchDir } from './scratch.ts'
import { testConfigYaml } from './sidecar.ts'

/**
 * The files of a `workers: 2` pod in front of `upstream`, in scratch directory `name`: the config file the
 * test writes (and rewrites, to reload it), and the audit file that tells which identity each worker served.
 */
export async function twoWorkerPodFiles(name: string, upstream: string) {
  const dir = await scratchDir(name)
  const auditFile = join(dir, 'audit.log')
  return {
    dir,
    auditFile,
    configFile: join(dir, 'config.yaml'),
    /** the config file's text: the test defaults, the pod in front of `upstream` auditing to `auditFile`, `more` */
    config: (more: Record<string, unknown>) =>
      testConfigYaml({ upstream, workers: 2, audit: { output: auditFile }, ...more }),
  }
}

/** the worker processes of a primary */
export const childPids = (pid: number): number[] =>
  execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean)
    .map(Number)

/** the `worker` label (`1`…N) of a worker process: the slot the primary started it in, from its environment */
export const workerSlot = (pid: number): string => {
  const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\u0000')
  const slot = env.find((e) => e.startsWith('NHI_WORKER_SLOT='))
  if (slot === undefined) throw new Error(`process ${pid} is not a worker`)
  return slot.slice('NHI_WORKER_SLOT='.length)
}

/**
 * One request on a fresh connection, so the cluster hands it to the next worker; resolves with the status.
 * `client`: the user agent, or the request's headers.
 */
export function freshGet(url: string, client: string | Record<string, string>): Promise<number> {
  const headers = typeof client === 'string' ? { 'user-agent': client } : client
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end()
  })
}

/**
 * Sends `count` requests with user agent `probe` to `${proxyUrl}${prefix}N`, each on a fresh connection, and
 * returns their statuses and the identities the audit file recorded for them.
 */
export async function probeWorkers(
  proxyUrl: string,
  auditFile: string,
  prefix: string,
  count: number,
  client: string | Record<string, string> = 'probe',
): Promise<{ statuses: number[]; identities: string[]; records: Record<string, unknown>[] }> {
  const statuses: number[] = []
  for (let i = 0; i < count; i++) statuses.push(await freshGet(`${proxyUrl}${prefix}${i}`, client))
  const lines = await eventually(
    () => {
      const all = readFileSync(auditFile, 'utf8')
        .split('\n')
        .filter((l) => l.includes(`"path":"${prefix}`))
      return all.length === count ? all : undefined
    },
    { what: 'the audit lines of the requests' },
  )
  const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
  return { statuses, identities: records.map((r) => r['identity'] as string), records }
}
