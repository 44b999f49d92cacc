// A listen address that cannot be bound is one stderr line naming the address and saying why in words, exit 2,
// for every command that listens: an IP address no interface of this host has, a host name that does not
// resolve (getaddrinfo's error named neither the port nor the address), a port another process holds.
import { createServer } from 'node:net'
import t from 'tap'
import { listenUntilTeardown } from '../helpers/net.ts'
import { runCli } from '../helpers/sidecar.ts'

// TEST-NET-1 (RFC 5737): documentation only, on no interface of any host
const FOREIGN = '192.0.2.1'
// RFC 6761: never resolves
const UNRESOLVABLE = 'nhi-proxy-test.invalid'

const lines = (text: string) => text.split('\n').filter((l) => l !== '')

t.test('run: an address of no interface here, for the proxy and for the admin listener', async (t) => {
  for (const [flag, other] of [
    ['--listen', '--admin'],
    ['--admin', '--listen'],
  ] as const) {
    const r = await runCli(['run', flag, `${FOREIGN}:8080`, other, '127.0.0.1:0'])
    t.equal(r.code, 2, `${flag}: exit 2`)
    t.same(
      lines(r.stderr),
      [
        `nhi-proxy: cannot listen on ${FOREIGN}:8080: address not available on this host (no interface has it)`,
      ],
      `${flag}: one line in words, naming the address`,
    )
  }
})

t.test('run: a host name that does not resolve is named with its port', async (t) => {
  for (const [flag, other] of [
    ['--listen', '--admin'],
    ['--admin', '--listen'],
  ] as const) {
    const r = await runCli(['run', flag, `${UNRESOLVABLE}:8080`, other, '127.0.0.1:0'])
    t.equal(r.code, 2, `${flag}: exit 2`)
    t.match(
      lines(r.stderr),
      [
        new RegExp(
          `^nhi-proxy: cannot listen on ${UNRESOLVABLE.replace(/\./g, '\\.')}:8080: host name not found`,
        ),
      ],
      `${flag}: one line naming the address`,
    )
    t.notMatch(r.stderr, /getaddrinfo|ENOTFOUND|EAI_/, `${flag}: no errno`)
  }
})

t.test('run --workers 2: every worker fails alike, the pod says it once', async (t) => {
  const port = await listenUntilTeardown(t, createServer())
  for (const [listen, why] of [
    [`${UNRESOLVABLE}:8080`, 'host name not found (use an IP address, or a name this host resolves)'],
    [`${FOREIGN}:8080`, 'address not available on this host (no interface has it)'],
    [`127.0.0.1:${port}`, 'address in use'],
  ] as const) {
    const r = await runCli(['run', '--workers', '2', '--listen', listen, '--admin', '127.0.0.1:0'])
    t.equal(r.code, 2, `${listen}: exit 2`)
    t.same(
      lines(r.stderr),
      [`nhi-proxy: cannot listen on ${listen}: ${why}`],
      `${listen}: one line, as a one-process start says it`,
    )
  }
})

t.test('demo-idp: a port another process holds, and a foreign address', async (t) => {
  const port = await listenUntilTeardown(t, createServer())
  const taken = await runCli(['demo-idp', '--listen', `127.0.0.1:${port}`])
  t.equal(taken.code, 2)
  t.same(
    lines(taken.stderr),
    [`nhi-proxy: cannot listen on 127.0.0.1:${port}: address in use`],
    'as run says it',
  )
  const foreign = await runCli(['demo-idp', '--listen', `${FOREIGN}:9400`])
  t.equal(foreign.code, 2)
  t.same(lines(foreign.stderr), [
    `nhi-proxy: cannot listen on ${FOREIGN}:9400: address not available on this host (no interface has it)`,
  ])
})
