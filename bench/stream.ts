// The proxy's own RSS while it streams one large upload and one large download, on every Node version at
// hand:
//   node --import ./scripts/register-ts.mjs bench/stream.ts [--size MB] [--repeat N] [--node 20,22,24,26]
// The bundle (built first into a scratch dir) runs in a child process per Node version; this process is the
// client and the upstream, so only the proxy's memory is measured (/proc/<pid>/status). Node 22, 24 and 26
// come from .cache/node-<major>/ (`node scripts/node-versions.mjs`); the running node serves its own major.
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  buildBundle,
  describeStream,
  MB,
  measureStream,
  type StreamMemory,
  startBundledProxy,
  startStreamUpstream,
} from './lib/stream-rss.ts'

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '1024' },
    repeat: { type: 'string', default: '3' },
    node: { type: 'string', default: '20,22,24,26' },
  },
})
const size = Number(values.size) * MB
const repeat = Number(values.repeat)
const root = fileURLToPath(new URL('../', import.meta.url))

function nodeFor(major: string): string | undefined {
  if (process.version.startsWith(`v${major}.`)) return process.execPath
  const cached = join(root, '.cache', `node-${major}`, 'bin', 'node')
  return existsSync(cached) ? cached : undefined
}

const scratch = mkdtempSync(join(tmpdir(), 'nhi-stream-'))
const upstream = await startStreamUpstream()
const rows: StreamMemory[] = []
try {
  const bundle = buildBundle(scratch)
  for (let round = 1; round <= repeat; round++) {
    // interleaved: machine load drifts over a run and should hit every version alike
    for (const major of values.node.split(',')) {
      const node = nodeFor(major)
      if (!node) {
        if (round === 1)
          console.log(`node ${major}: not found (run: node scripts/node-versions.mjs ${major})`)
        continue
      }
      const proxy = await startBundledProxy(bundle, upstream.url, { node })
      try {
        const r = await measureStream(proxy, size)
        rows.push(r)
        console.log(`--- round ${round}\n${describeStream(r)}`)
      } finally {
        await proxy.stop()
      }
    }
  }
} finally {
  await upstream.close()
  rmSync(scratch, { recursive: true, force: true })
}

// markdown summary: per Node version, the range over rounds
const mb = (n: number) => (n / MB).toFixed(0)
const range = (xs: number[]) => `${mb(Math.min(...xs))}–${mb(Math.max(...xs))}`
console.log(
  `\n| Node | baseline RSS (MB) | upload ${mb(size)} MB: RSS min–max (MB) | download ${mb(size)} MB: RSS min–max (MB) | growth over baseline (MB) | MB/s up / down |`,
)
console.log('| --- | --- | --- | --- | --- | --- |')
for (const node of [...new Set(rows.map((r) => r.node))]) {
  const rs = rows.filter((r) => r.node === node)
  const up = rs.map((r) => `${mb(r.upload.min)}–${mb(Math.max(r.upload.max, r.upload.peak ?? 0))}`).join(', ')
  const down = rs
    .map((r) => `${mb(r.download.min)}–${mb(Math.max(r.download.max, r.download.peak ?? 0))}`)
    .join(', ')
  const rate = (p: { bytes: number; ms: number }) => (p.bytes / MB / (p.ms / 1000)).toFixed(0)
  const rates = rs.map((r) => `${rate(r.upload)}/${rate(r.download)}`).join(', ')
  console.log(
    `| ${node} | ${range(rs.map((r) => r.baseline))} | ${up} | ${down} | ${range(rs.map((r) => r.growth))} | ${rates} |`,
  )
}
