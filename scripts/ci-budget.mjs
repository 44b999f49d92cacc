#!/usr/bin/env node
// Whether one more whole `npm test` run fits in CI's time limit. `.ci/run` asks before each extra Node
// version: a job the limit cuts off reports nothing at all, so a version that would not end in time is left
// out, and said so, instead of sinking the runs that did end.
//
//   node scripts/ci-budget.mjs USED_SECONDS LONGEST_RUN_SECONDS [BUDGET_SECONDS]
//
// USED_SECONDS: what the job has used so far; LONGEST_RUN_SECONDS: the longest `npm test` run so far; the
// next run is taken to last that long plus a fifth (runs on one machine differ by less). BUDGET_SECONDS
// (default NHI_CI_BUDGET_SECONDS, else 5,040 = 84 minutes) leaves 6 of CI's 90 minutes for the clone before
// .ci/run starts and the closing summary. Exit 0 and no output: it fits. Exit 3 and one line saying why: it
// does not. Exit 2: the arguments are not whole numbers of seconds.

const DEFAULT_BUDGET_SECONDS = /^\d+$/.test(process.env.NHI_CI_BUDGET_SECONDS ?? '')
  ? Number(process.env.NHI_CI_BUDGET_SECONDS)
  : 84 * 60
const MARGIN = 1.2

function nextRunFits(usedSeconds, longestRunSeconds, budgetSeconds = DEFAULT_BUDGET_SECONDS) {
  const expected = Math.ceil(longestRunSeconds * MARGIN)
  const endsAt = usedSeconds + expected
  return {
    // strictly inside: a budget of 0 admits no run, however short the runs so far (seconds are whole)
    fits: endsAt < budgetSeconds,
    reason:
      `${minutes(usedSeconds)} used, the longest run took ${minutes(longestRunSeconds)}: another would end ` +
      `after ≈ ${minutes(endsAt)}, past the ${minutes(budgetSeconds)} budget`,
  }
}

function minutes(seconds) {
  return `${(seconds / 60).toFixed(1)} min`
}

const args = process.argv.slice(2)
const numbers = args.map((a) => (/^\d+$/.test(a) ? Number(a) : Number.NaN))
if (args.length < 2 || args.length > 3 || numbers.some(Number.isNaN)) {
  console.error('usage: node scripts/ci-budget.mjs USED_SECONDS LONGEST_RUN_SECONDS [BUDGET_SECONDS]')
  process.exit(2)
}
const [used, longest, budget] = numbers
const { fits, reason } = nextRunFits(used, longest, budget)
if (!fits) {
  console.log(reason)
  process.exit(3)
}
