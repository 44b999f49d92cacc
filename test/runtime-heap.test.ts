import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { HEAP_GROWING_PERCENT, heapGrowthFlag } from '../src/runtime-heap.ts'

const run = promisify(execFile)
const MODULE = fileURLToPath(new URL('../src/runtime-heap.ts', import.meta.url))

t.test('the heap growth cap is set unless the operator chose one on the node command line', async (t) => {
  const ours = `--heap-growing-percent=${HEAP_GROWING_PERCENT}`
  t.equal(heapGrowthFlag([]), ours)
  t.equal(heapGrowthFlag(['--enable-source-maps', '--max-old-space-size=256']), ours)
  t.equal(heapGrowthFlag(['--heap-growing-percent=40']), undefined)
  t.equal(heapGrowthFlag(['--heap_growing_percent=40']), undefined, 'underscore spelling')
  t.equal(heapGrowthFlag(['--heap-growing-percent', '40']), undefined, 'value as the next argument')
})

// Old-generation churn with a steady live set (a cache turning over): the largest heap V8 reserves, in MB.
const CHURN = `
const { tuneHeapGrowth } = await import(${JSON.stringify(MODULE)})
const flag = tuneHeapGrowth()
const live = new Array(40000)
let max = 0
for (let i = 0; i < 1_000_000; i++) {
  live[i % live.length] = { a: 'x'.repeat(200) + i, b: [i, i + 1, i + 2], c: { d: i } }
  if (i % 5000 === 0) max = Math.max(max, process.memoryUsage().heapTotal)
}
console.log(JSON.stringify({ flag: flag ?? null, maxMB: max / 1e6 }))
`

async function churn(nodeFlags: string[]): Promise<{ flag: string | null; maxMB: number }> {
  const { stdout } = await run(
    process.execPath,
    [...nodeFlags, '--import', 'tsx', '--input-type=module', '-e', CHURN],
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
      `largest heap ${capped.maxMB.toFixed(0)} MB capped vs ${operator.maxMB.toFixed(0)} MB at 300% growth`,
    )
  },
)
