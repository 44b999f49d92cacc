// A second `npm start` while the first runs finds the demo's ports taken: it says which address, that another
// demo may hold it and which flags pick other ports; exit 2 and no stack trace.
import { once } from 'node:events'
import { createServer } from 'node:net'
import t from 'tap'
import { runCli } from '../helpers/sidecar.ts'

t.test('demo on taken ports: the address, the likely cause and the flags, exit 2', async (t) => {
  const taken = createServer()
  taken.listen(0, '127.0.0.1')
  await once(taken, 'listening')
  t.teardown(() => taken.close())
  const addr = taken.address()
  if (addr === null || typeof addr === 'string') throw new Error('no port')
  const busy = `127.0.0.1:${addr.port}`
  const ephemeral = '127.0.0.1:0'
  const flags = { '--listen': ephemeral, '--https': ephemeral, '--admin': ephemeral, '--idp': ephemeral }
  const [idp, admin] = await Promise.all(
    (['--idp', '--admin'] as const).map((flag) =>
      // a demo that did not stop at the taken port would run its 20 s and exit 0; the deadline only bounds a
      // start slowed by a loaded machine (the demo makes its keys and certificates first)
      runCli(['demo', ...Object.entries({ ...flags, [flag]: busy }).flat(), '--duration', '20s'], {
        timeoutMs: 40_000,
      }),
    ),
  )
  for (const [flag, r] of [
    ['--idp', idp],
    ['--admin', admin],
  ] as const) {
    t.equal(r?.code, 2, `${flag} taken: exit 2`)
    const escaped = busy.replace(/\./g, '\\.')
    t.match(r?.stderr, new RegExp(`cannot listen on ${escaped}: address in use`), `${flag}: the address`)
    t.match(r?.stderr, /another nhi-proxy demo.*--listen, --https, --admin, --idp/, `${flag}: what to do`)
    t.notMatch(r?.stderr, /EADDRINUSE|\n\s+at /, `${flag}: no errno or stack trace`)
  }
})

t.test('demo and demo-idp: an address that is not HOST:PORT is a usage error, exit 1', async (t) => {
  const [demo, idp] = await Promise.all([
    runCli(['demo', '--idp', '127.0.0.1:99999', '--duration', '5s'], { timeoutMs: 15_000 }),
    runCli(['demo-idp', '--listen', 'localhost'], { timeoutMs: 15_000 }),
  ])
  t.equal(demo.code, 1)
  t.match(demo.stderr, /--idp <addr>.*127\.0\.0\.1:99999.*port must be 0 to 65535/)
  t.equal(idp.code, 1)
  t.match(idp.stderr, /--listen <addr>.*localhost.*expected HOST:PORT/)
  t.notMatch(demo.stderr + idp.stderr, /options\.port|\n\s+at /, "not Node's message, no stack trace")
})
