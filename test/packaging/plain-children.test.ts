// The processes a test starts run as users start them: no test-runner preload rides along in NODE_OPTIONS
// (test/helpers/plain-children.ts says why and how). Checked for both ways the helpers start processes.
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'

const REPORT = `console.log(JSON.stringify({
  nodeOptions: process.env.NODE_OPTIONS ?? '',
  tracking: Object.keys(process.env).filter((k) => k.startsWith('_TAPJS_PROCESSINFO')),
  sourceMaps: process.sourceMapsEnabled,
  preloads: process.execArgv.filter((a) => /^--(import|require|loader|experimental-loader)\b/.test(a)),
}))`

interface Report {
  nodeOptions: string
  tracking: string[]
  sourceMaps: boolean
  preloads: string[]
}

function assertPlain(t: Test, r: Report, how: string): void {
  t.notMatch(r.nodeOptions, /processinfo/, `${how}: no tracking preload in NODE_OPTIONS`)
  t.same(r.tracking, [], `${how}: no tracking variables`)
  t.equal(r.sourceMaps, false, `${how}: source maps off, as in a user's node`)
  t.same(r.preloads, [], `${how}: no preload arguments`)
}

t.test('execFile with the inherited env', async (t) => {
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', REPORT])
  assertPlain(t, JSON.parse(stdout) as Report, 'execFile')
})

t.test('spawn with an env of its own (the tracking hook used to add itself to it)', async (t) => {
  const child = spawn(process.execPath, ['-e', REPORT], {
    env: { ...process.env, NHI_EXAMPLE: '1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString()
  })
  await once(child, 'close')
  assertPlain(t, JSON.parse(out) as Report, 'spawn')
})
