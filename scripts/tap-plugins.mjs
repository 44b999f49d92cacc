// Brings tap's built plugin set in line with the `tap.plugin` list in package.json before the tests run.
// tap builds its Test class from that list. A runner that finds the build out of date (the first run after
// `npm ci`, or after the list changes) rebuilds it for the next run only: the test files it starts still get
// the module hooks of the old set (the default set: ts-node and the mock loader on top of tsx), which on
// Node 20 made such a run ~50% slower. Checking costs a fraction of a second; a build, when needed, ~7 s.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { TapConfig } from '@tapjs/config'
import { signature } from '@tapjs/test'

const config = await TapConfig.load()
if (config.pluginSignature !== signature) {
  process.stderr.write("tap's plugin build does not match package.json: rebuilding it before the tests\n")
  const tapDir = dirname(createRequire(import.meta.url).resolve('tap/package.json'))
  const built = spawnSync(process.execPath, [join(tapDir, 'dist/esm/run.mjs'), 'build'], { stdio: 'inherit' })
  process.exit(built.status ?? 1)
}
