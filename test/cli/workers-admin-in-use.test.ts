// With workers, a taken admin port is reported in the words a one-process start uses: exit 2, no errno.
import { once } from 'node:events'
import { createServer } from 'node:net'
import t from 'tap'
import { runCli } from '../helpers/sidecar.ts'

t.test('workers: admin port in use → "address in use", exit 2', async (t) => {
  const taken = createServer()
  taken.listen(0, '127.0.0.1')
  await once(taken, 'listening')
  t.teardown(() => taken.close())
  const addr = taken.address()
  if (addr === null || typeof addr === 'string') throw new Error('no port')
  const busy = `127.0.0.1:${addr.port}`
  const r = await runCli(['run', '--workers', '2', '--listen', '127.0.0.1:0', '--admin', busy], {
    timeoutMs: 15_000,
  })
  t.equal(r.code, 2)
  t.match(
    r.stderr,
    new RegExp(`cannot listen on the admin address ${busy.replace(/\./g, '\\.')}: address in use`),
  )
  t.notMatch(r.stderr, /EADDRINUSE|\n\s+at /)
})
