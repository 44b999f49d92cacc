import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { HEAP_GROWING_PERCENT, heapGrowthFlag } from '../../src/runtime-heap.ts'
import { TS_NODE_FLAGS } from '../helpers/sidecar.ts'

const run = promisify(execFile)
const MODULE = fileURLToPath(new URL('../../src/runtime-heap.ts', import.meta.url))

t.test('the heap growth cap is set unless the operator chose one on the node command line', async (t) => {
  const ours = `--heap-growing-percent=${HEAP_GROWING_PERCENT}`
  t.equal(heapGrowthFlag([]), ours)
  t.equal(heapGrowthFlag(['--enable-source-maps', '--max-old-space-size=256']), ours)
  t.equal(heapGrowthFlag(['--heap-growing-percent=40']), undefined)
  t.equal(heapGrowthFlag(['--heap_growing_percent=40']), undefined, 'underscore spelling')
  t.equal(heapGrowthFlag(['--heap-growing-percent', '40']), undefined, 'value as the next argument')
})

// Old-generation churn with a steady live set (a cache turning over): the largest old space V8 reserves, in
// MB. The flag governs the old generation only; the young generation is sized by other heuristics (on Node 24
// it grows to >100 MB on a machine with plenty of memory), so the whole heapTotal would measure the wrong thing.
const CHURN = `
const { getHeapSpaceStatistics } = await import('node:v8')
const { tuneHeapGrowth } = await import(${JSON.stringify(MODULE)})
const flag = tuneHeapGrowth()
function churn() {
  const live = new Array(40000)
  let max = 0
  // long enough that the uncapped heap reaches its plateau on every Node version: by 500,000 iterations on
  // Node 20, 22 and 24 (about 85 MB uncapped against 35 MB capped); a shorter run sometimes stopped before
  // it, which made the comparison noisy
  for (let i = 0; i < 700_000; i++) {
    live[i % live.length] = { a: 'x'.repeat(200) + i, b: [i, i + 1, i + 2], c: { d: i } }
    if (i % 5000 === 0) {
      for (const space of getHeapSpaceStatistics()) {
        if (space.space_name === 'old_space') max = Math.max(max, space.space_size)
      }
    }
  }
  return max
}
const max = churn()
console.log(JSON.stringify({ flag: flag ?? null, maxMB: max / 1e6 }))
`

async function churn(nodeFlags: string[]): Promise<{ flag: string | null; maxMB: number }> {
  const { stdout } = await run(
    process.execPath,
    // A fixed, small young generation makes every run promote its churn to the old generation, the part the
    // flag governs. Left to itself Node 24 sizes the young generation by machine memory (>100 MB here), and
    // whether the churn then dies young or is promoted varied from run to run (24 to 212 MB uncapped).
    ['--max-semi-space-size=1', ...nodeFlags, ...TS_NODE_FLAGS, '--input-type=module', '-e', CHURN],
    { timeout: 50_000 },
  )
  return JSON.parse(stdout.trim().split('\n').pop() ?? '{}')
}

t.test(
  'the cap keeps the heap near the live set under churn; an explicit operator flag is left alone',
  async (t) => {
    const capped = await churn([])
    // 300% is what V8 allows itself at most on its own (a factor of 4): the uncapped worst case
    const operator = await churn(['--heap-growing-percent=300'])
    t.equal(capped.flag, `--heap-growing-percent=${HEAP_GROWING_PERCENT}`)
    t.equal(operator.flag, null, "the operator's --heap-growing-percent=300 is kept")
    t.ok(
      capped.maxMB < operator.maxMB * 0.8,
      `largest old space ${capped.maxMB.toFixed(0)} MB capped vs ${operator.maxMB.toFixed(0)} MB at 300% growth`,
    )
  },
)
