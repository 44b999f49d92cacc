// V8 lets the old generation grow well past the live set before it collects again (often 1.5–2× here).
// A sidecar's live set is small and steady (bounded caches, a bounded identity table), but a stream of new
// credentials turns cache entries over: each evicted entry is old-generation garbage, and with the default
// growth the heap, and so RSS, settled at about 2× what was live. Capping growth at 10% over the live set
// took the 1,000,000-token memory bench from ≈ 230 MB to ≈ 165 MB RSS with no throughput difference that
// the benchmark could separate from noise (bench/README.md). The flag is read at every collection, so it
// can be set after start-up.
import { setFlagsFromString } from 'node:v8'

export const HEAP_GROWING_PERCENT = 10
const FLAG = '--heap-growing-percent'

/**
 * The V8 flag nhi-proxy sets, or undefined when the operator chose their own on the node command line
 * (`node --heap-growing-percent=N nhi-proxy …`): an explicit choice always wins.
 */
export function heapGrowthFlag(execArgv: readonly string[]): string | undefined {
  // V8 spells its flags with dashes or underscores alike
  const chosen = execArgv.some((arg) => {
    const a = arg.replace(/_/g, '-')
    return a === FLAG || a.startsWith(`${FLAG}=`)
  })
  return chosen ? undefined : `${FLAG}=${HEAP_GROWING_PERCENT}`
}

export function tuneHeapGrowth(execArgv: readonly string[] = process.execArgv): string | undefined {
  const flag = heapGrowthFlag(execArgv)
  if (flag) setFlagsFromString(flag)
  return flag
}
