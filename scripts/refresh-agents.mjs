#!/usr/bin/env node
// Regenerates src/identity/agent-data.generated.json from the installed crawler-user-agents package.
// Refresh: bump the crawler-user-agents devDependency, run `node scripts/refresh-agents.mjs`, commit both.
// The snapshot keeps only what the classifier needs (pattern and whether the entry is tagged ai-crawler);
// the package's examples stay in the package, where the corpus test reads them.
import { readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const pkgDir = dirname(require.resolve('crawler-user-agents'))
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'))
const entries = JSON.parse(readFileSync(join(pkgDir, 'crawler-user-agents.json'), 'utf8'))

function snapshotOf(version, list) {
  return {
    source: 'crawler-user-agents',
    version,
    license: 'MIT',
    // [pattern, 1 when tagged ai-crawler else 0], in the package's order
    patterns: list.map((e) => [e.pattern, (e.tags ?? []).includes('ai-crawler') ? 1 : 0]),
  }
}

const out = join(root, 'src/identity/agent-data.generated.json')
const snapshot = snapshotOf(pkg.version, entries)
const body = `{\n  "source": ${JSON.stringify(snapshot.source)},\n  "version": ${JSON.stringify(snapshot.version)},\n  "license": ${JSON.stringify(snapshot.license)},\n  "patterns": [\n${snapshot.patterns.map((p) => `    ${JSON.stringify(p)}`).join(',\n')}\n  ]\n}\n`
writeFileSync(out, body)
process.stdout.write(
  `wrote ${snapshot.patterns.length} patterns from crawler-user-agents ${snapshot.version}\n`,
)
