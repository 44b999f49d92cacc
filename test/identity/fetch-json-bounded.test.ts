// Published documents (key sets, discovery, crawler ranges) are read whole only up to their bound: a server
// that answers without end is refused as soon as it passes it, not after it has filled the process's memory.
import { createServer } from 'node:http'
import t from 'tap'
import { fetchJsonDocument } from '../../src/identity/jwt/jwks.ts'
import { listenUntilTeardown } from '../helpers/net.ts'

t.test('a document within its bound is read; one past it is refused, its stream cut', async (t) => {
  let endless = 0
  const server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    if (req.url === '/small') {
      res.end(JSON.stringify({ keys: [] }))
      return
    }
    // never ends on its own: 64 KiB at a time for as long as someone reads
    const chunk = Buffer.alloc(64 * 1024, 0x20)
    const more = () => {
      while (!res.destroyed && res.write(chunk)) endless += chunk.length
    }
    res.on('drain', more)
    more()
  })
  const port = await listenUntilTeardown(t, server)
  const opts = { timeoutMs: 10_000, maxBytes: 512 * 1024 }
  t.same(await fetchJsonDocument(`http://127.0.0.1:${port}/small`, opts), { keys: [] })
  await t.rejects(
    fetchJsonDocument(`http://127.0.0.1:${port}/endless`, opts),
    /answered more than 524288 bytes/,
  )
  t.ok(endless < 64 * 1024 * 1024, `stopped reading early (${endless} bytes written)`)
})
