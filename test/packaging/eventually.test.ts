// The shared wait helper: a probe that knows waiting cannot help stops the wait at once.
import t from 'tap'
import { eventually, GiveUp } from '../helpers/eventually.ts'

t.test('a GiveUp from the probe rejects at once, an ordinary error is retried', async (t) => {
  let calls = 0
  await t.rejects(
    eventually(
      () => {
        calls++
        throw new GiveUp('the process exited')
      },
      { timeoutMs: 60_000, intervalMs: 1 },
    ),
    { message: 'the process exited' },
  )
  t.equal(calls, 1, 'probed once: no polling on to the deadline')

  let attempts = 0
  const value = await eventually(
    () => {
      attempts++
      if (attempts < 3) throw new Error('not yet')
      return 'ready'
    },
    { timeoutMs: 60_000, intervalMs: 1 },
  )
  t.equal(value, 'ready')
  t.equal(attempts, 3, 'an ordinary error counts as "not yet"')
})
