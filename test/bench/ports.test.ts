// The ports the bench and the tests hand to child processes: from a range no port-0 listener can be given
// meanwhile, never twice from one process, and a port that stays closed for "upstream down" tests.
import { readFileSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import t from 'tap'
import { freePort, refusedPort } from '../helpers/net.ts'

const ephemeralLow = Number(
  readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0],
)

t.test('freePort: below the ephemeral range, free, never the same twice', async (t) => {
  const ports: number[] = []
  for (let i = 0; i < 40; i++) ports.push(await freePort())
  t.equal(new Set(ports).size, ports.length, 'forty distinct ports')
  t.ok(
    ports.every((p) => p >= 20_000 && p < ephemeralLow),
    `all in 20000-${ephemeralLow - 1}, where port 0 never lands`,
  )
  // a port 0 listener lands in the ephemeral range, so it cannot take one of these before its owner binds it
  const server = createServer().listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  const kernelPort = (server.address() as { port: number }).port
  t.ok(kernelPort >= ephemeralLow, 'port 0 gives a port of the ephemeral range')
  server.close()
})

t.test('refusedPort: connections are refused', async (t) => {
  const port = await refusedPort()
  const code = await new Promise<string | undefined>((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve('connected')
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code))
  })
  t.equal(code, 'ECONNREFUSED')
  t.ok(port >= 1000 && port < 1024, 'a privileged port fetch does not block')
})
