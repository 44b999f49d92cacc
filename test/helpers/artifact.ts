// The shipped artifact, started as users start it: the bundle (dist/nhi-proxy.mjs), the installed package's
// bin, or the image's entrypoint. One scenario proves the core job end to end: a JWKS served over real HTTP,
// a token signed by it, and a real upstream that must see the request attributed and verified.
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { Test } from 'tap'
import { eventually, GiveUp } from './eventually.ts'
import { createSigningKey, type JwksServer, mintToken, startJwksServer } from './jwks.ts'
import { combinedOutput } from './sidecar.ts'
import { REPO_ROOT } from './tools.ts'
import { startUpstream, type TestUpstream } from './upstream.ts'

export const BUNDLE = join(REPO_ROOT, 'dist', 'nhi-proxy.mjs')

/** `npm test` builds the bundle before tap runs; a single file run on its own needs `npm run build` first. */
export function bundleBuilt(t: Test): boolean {
  const built = existsSync(BUNDLE)
  t.ok(built, `${BUNDLE} exists (npm run build)`)
  return built
}

export interface Proc {
  child: ChildProcess
  output(): string
  /** first match of `re` in stdout+stderr; rejects when the process exits first or after timeoutMs */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
  exited: Promise<number | null>
  /**
   * SIGTERM to the process group (npx starts the bin as a child of its own), SIGKILL after 20 s: the default
   * drain (timeouts.drainDelay 5 s, then in-flight requests) is what users get, so it is waited out
   */
  stop(): Promise<void>
}

/** Starts a long-running command in its own process group; stopped at the end of the test. */
export function startProcess(t: Test, cmd: string, args: string[], opts: SpawnOptions = {}): Proc {
  const child = spawn(cmd, args, { ...opts, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  const out = combinedOutput(child)
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  const signal = (sig: NodeJS.Signals) => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, sig)
    } catch {
      // the group is gone already
    }
  }
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    signal('SIGTERM')
    const killer = setTimeout(() => signal('SIGKILL'), 20_000)
    await exited
    clearTimeout(killer)
  }
  t.teardown(stop)
  return {
    child,
    output: out,
    exited,
    stop,
    waitFor: (re, timeoutMs = 30_000) =>
      eventually(
        () => {
          const m = out().match(re)
          if (m) return m
          if (child.exitCode !== null) throw new GiveUp(`exited ${child.exitCode} before ${re}`)
          return undefined
        },
        { timeoutMs, intervalMs: 50, what: `${re} in the output of ${cmd} ${args.join(' ')}` },
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n--- output ---\n${out()}`)
      }),
  }
}

export interface JwtScenario {
  jwks: JwksServer
  upstream: TestUpstream
  /** signed by a key only the JWKS over HTTP knows; sub = SUBJECT */
  token: string
  /** another token like `token`, never seen before (its own jti) */
  mint(): Promise<string>
  /** the config file's text: the JWKS issuer, one rule naming the subject, loopback ephemeral ports */
  config: string
}

export const SUBJECT = 'checkout-worker'
/** the identity the scenario's rule gives the token */
export const IDENTITY = `svc/${SUBJECT}`

export async function jwtScenario(t: Test): Promise<JwtScenario> {
  const key = await createSigningKey('artifact-1', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const mint = () =>
    mintToken(key, { jti: randomUUID() }, { issuer: jwks.url, audience: 'orders', subject: SUBJECT })
  const token = await mint()
  const config = [
    'service: artifact-test',
    'listen: { http: "127.0.0.1:0" }',
    'admin: "127.0.0.1:0"',
    `upstream: ${upstream.url}`,
    'audit: { output: "off" }',
    'jwt:',
    '  issuers:',
    `    - issuer: ${jwks.url}`,
    `      jwksUri: ${jwks.jwksUri}`,
    '      audiences: [orders]',
    'identities:',
    '  - name: "svc/{who}"',
    '    kind: service',
    '    match: { verified: true, jwt: { claims: { sub: "{who}" } } }',
    '',
  ].join('\n')
  return { jwks, upstream, token, mint, config }
}

/** The `explain --json` report of the scenario's token, checked: verified through the JWKS over HTTP. */
export function assertExplainedVerified(t: Test, stdout: string, s: JwtScenario): void {
  let report: { identity?: { name?: string; verified?: boolean; source?: string } } = {}
  try {
    report = JSON.parse(stdout)
  } catch {
    t.fail(`explain --json printed JSON: ${stdout}`)
  }
  t.equal(report.identity?.name, IDENTITY, 'explain: the rule names the token subject')
  t.equal(report.identity?.source, 'jwt', 'explain: attributed from the token')
  t.equal(report.identity?.verified, true, 'explain: the signature verified against the JWKS over HTTP')
  t.ok(s.jwks.hits >= 1, 'explain fetched the key set over HTTP')
}

/**
 * A started `run`: learns its addresses from the started log line, waits until /readyz says the key set
 * is loaded, sends the token through the proxy and checks what the upstream received.
 */
export async function assertProxiedVerified(t: Test, proc: Proc, s: JwtScenario): Promise<void> {
  const line = await proc.waitFor(/^\{.*"event":"started".*\}$/m, 45_000)
  const started = JSON.parse(line[0]) as { listen: string; metrics: string }
  const admin = started.metrics.replace(/\/metrics$/, '')
  const ready = await eventually(
    async () => {
      const r = await fetch(`${admin}/readyz`)
      const body = (await r.json()) as { ok: boolean; checks: Record<string, boolean> }
      return body.ok ? body : undefined
    },
    { timeoutMs: 20_000, what: '/readyz ok (key set fetched over HTTP)' },
  )
  t.equal(ready.checks['jwks'], true, '/readyz: the key set was fetched over HTTP')
  const before = s.upstream.received.length
  const res = await fetch(`http://${started.listen}/echo`, {
    headers: { authorization: `Bearer ${s.token}` },
  })
  t.equal(res.status, 200, 'proxied to the upstream')
  await res.arrayBuffer()
  const seen = s.upstream.received.slice(before).find((r) => r.url === '/echo')
  t.ok(seen, 'the upstream received the request')
  t.equal(seen?.headers['x-nhi-verified'], 'true', 'upstream sees x-nhi-verified: true')
  t.equal(seen?.headers['x-nhi-identity'], IDENTITY, 'upstream sees the identity the rule gives the token')
  t.equal(seen?.headers['x-nhi-source'], 'jwt', 'upstream sees the token as the source')
  t.equal(seen?.headers['authorization'], `Bearer ${s.token}`, 'Authorization passes through untouched')
}
