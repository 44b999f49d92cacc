// What the proxy learns from the upstream's CORS answers (src/proxy/cors.ts): a grant only for the origin the
// upstream named or `*`, never `*` with credentials, a preflight keeping the expose list of actual answers, a
// map bounded however many origins come, and grants that end with their ttl.
import type { IncomingMessage } from 'node:http'
import t from 'tap'
import { CorsMemory } from '../../src/proxy/cors.ts'
import { rng } from '../helpers/rng.ts'

const APP = 'https://app.example'

function request(origin: string | undefined, method = 'GET', preflight = false): IncomingMessage {
  const headers: Record<string, string> = {}
  if (origin !== undefined) headers['origin'] = origin
  if (preflight) headers['access-control-request-method'] = 'POST'
  return { method, headers } as unknown as IncomingMessage
}

/** an actual response's fields, as [name, value, …] pairs in the upstream's spelling */
function pairs(fields: Record<string, string>): string[] {
  return Object.entries(fields).flat()
}

t.test('the origin the upstream named, with its credentials flag and expose list', async (t) => {
  const cors = new CorsMemory()
  t.equal(cors.answerFields(APP), undefined, 'nothing before the upstream answered the origin')
  cors.learnFromPairs(
    request(APP),
    pairs({
      'Content-Type': 'application/json',
      'Access-Control-Allow-Origin': APP,
      'Access-Control-Allow-Credentials': 'true',
      'Access-Control-Expose-Headers': 'grpc-status, grpc-message',
    }),
  )
  t.same(cors.answerFields(APP), {
    'access-control-allow-origin': APP,
    'access-control-allow-credentials': 'true',
    'access-control-expose-headers': 'grpc-status, grpc-message',
    vary: 'Origin',
  })
  t.equal(cors.answerFields('https://other.example'), undefined, 'another origin gets nothing')
  t.equal(cors.answerFields(undefined), undefined, 'a request without Origin gets nothing')

  const before = cors.answerFields(APP)
  cors.learnFromPairs(
    request(APP),
    pairs({
      'access-control-allow-origin': APP,
      'access-control-allow-credentials': 'true',
      'access-control-expose-headers': 'grpc-status, grpc-message',
    }),
  )
  t.equal(cors.answerFields(APP), before, 'an answer that confirms the grant keeps it as it was made')
})

t.test('what is not a grant', async (t) => {
  const cors = new CorsMemory()
  cors.learnFromPairs(request(undefined), pairs({ 'access-control-allow-origin': '*' }))
  t.equal(cors.size, 0, 'a request without Origin is not looked at')
  cors.learnFromPairs(request('https://evil.example'), pairs({ 'access-control-allow-origin': APP }))
  t.equal(cors.answerFields('https://evil.example'), undefined, 'an upstream that named another origin')
  cors.learnFromPairs(request(APP), pairs({ 'content-type': 'text/plain' }))
  t.equal(cors.answerFields(APP), undefined, 'an answer without access-control-allow-origin')
  cors.learnFromPairs(
    request(APP),
    pairs({ 'access-control-allow-origin': APP }).concat(['Access-Control-Allow-Origin', APP]),
  )
  t.equal(
    cors.answerFields(APP),
    undefined,
    'access-control-allow-origin sent twice, which a browser refuses',
  )
  cors.learnFromHeaders(request(APP), { 'access-control-allow-origin': `${APP}, ${APP}` })
  t.equal(cors.answerFields(APP), undefined, 'an HTTP/2 head with it twice (joined by node:http2)')
  const stretched = `https://${'a'.repeat(2000)}.example`
  cors.learnFromPairs(request(stretched), pairs({ 'access-control-allow-origin': '*' }))
  t.equal(cors.answerFields(stretched), undefined, 'an origin longer than any host is not kept')
  cors.learnFromPairs(request('no origin at all'), pairs({ 'access-control-allow-origin': '*' }))
  t.equal(cors.answerFields('no origin at all'), undefined, 'nor something that is no origin')
  cors.learnFromPairs(request(`${APP}/path`), pairs({ 'access-control-allow-origin': '*' }))
  t.equal(cors.answerFields(`${APP}/path`), undefined, 'nor a URL with a path')
  t.equal(cors.size, 0)

  cors.learnFromPairs(request(APP), pairs({ 'access-control-allow-origin': APP }))
  t.ok(cors.answerFields(APP), 'granted')
  cors.learnFromPairs(request(APP), pairs({ 'access-control-allow-origin': 'https://another.example' }))
  t.equal(cors.answerFields(APP), undefined, 'the upstream naming another origin for it ends the grant')
})

t.test('`*` is answered as `*`, never with credentials', async (t) => {
  const cors = new CorsMemory()
  cors.learnFromPairs(
    request(APP),
    pairs({ 'access-control-allow-origin': '*', 'access-control-allow-credentials': 'true' }),
  )
  t.same(cors.answerFields(APP), { 'access-control-allow-origin': '*', vary: 'Origin' })
  cors.learnFromHeaders(request('https://h2.example'), {
    'access-control-allow-origin': '*',
    'access-control-allow-credentials': 'true',
    'access-control-expose-headers': 'grpc-status',
  })
  t.same(cors.answerFields('https://h2.example'), {
    'access-control-allow-origin': '*',
    'access-control-expose-headers': 'grpc-status',
    vary: 'Origin',
  })
})

t.test('credentials only as a case-sensitive true, an expose list only as a list of names', async (t) => {
  const cors = new CorsMemory()
  cors.learnFromPairs(
    request(APP),
    pairs({
      'access-control-allow-origin': APP,
      'access-control-allow-credentials': 'True',
      'access-control-expose-headers': 'grpc-status\u00ff; x=1',
    }),
  )
  t.same(cors.answerFields(APP), { 'access-control-allow-origin': APP, vary: 'Origin' })
})

t.test('a preflight answer keeps the expose list of the actual answers', async (t) => {
  const cors = new CorsMemory()
  cors.learnFromPairs(
    request(APP, 'OPTIONS', true),
    pairs({ 'access-control-allow-origin': APP, 'access-control-allow-credentials': 'true' }),
  )
  t.same(
    cors.answerFields(APP),
    { 'access-control-allow-origin': APP, 'access-control-allow-credentials': 'true', vary: 'Origin' },
    'from a preflight alone: what it said',
  )
  cors.learnFromPairs(
    request(APP, 'POST'),
    pairs({
      'access-control-allow-origin': APP,
      'access-control-allow-credentials': 'true',
      'access-control-expose-headers': 'grpc-status',
    }),
  )
  const actual = cors.answerFields(APP)
  t.equal(actual?.['access-control-expose-headers'], 'grpc-status', 'an actual answer exposes')
  cors.learnFromPairs(
    request(APP, 'OPTIONS', true),
    pairs({ 'access-control-allow-origin': APP, 'access-control-allow-credentials': 'true' }),
  )
  t.equal(cors.answerFields(APP), actual, 'the next preflight leaves it as it was')
  cors.learnFromPairs(request(APP, 'OPTIONS'), pairs({ 'access-control-allow-origin': APP }))
  t.same(
    cors.answerFields(APP),
    { 'access-control-allow-origin': APP, vary: 'Origin' },
    'a plain OPTIONS is an actual request: its answer says what is exposed',
  )
})

t.test('a flood of distinct origins stays within the bound', async (t) => {
  const max = 16
  const cors = new CorsMemory(max)
  const random = rng(0xc0125)
  for (let i = 0; i < 5_000; i++) {
    const origin = `https://${Math.floor(random() * 2 ** 32).toString(36)}-${i}.example`
    cors.learnFromPairs(request(origin), pairs({ 'access-control-allow-origin': '*' }))
    if (cors.size > max) {
      t.fail(`${cors.size} origins kept after ${i + 1}`)
      return
    }
  }
  t.equal(cors.size, max, 'the most recent origins, no more')
  cors.learnFromPairs(request(APP), pairs({ 'access-control-allow-origin': APP }))
  t.ok(cors.answerFields(APP), 'the newest origin is kept')
})

t.test('a grant ends its ttl after the upstream last answered with it', async (t) => {
  let now = 1_000
  const cors = new CorsMemory(8, 600_000, () => now)
  cors.learnFromPairs(request(APP), pairs({ 'access-control-allow-origin': APP }))
  now += 500_000
  t.ok(cors.answerFields(APP), 'within the ttl')
  cors.learnFromPairs(request(APP), pairs({ 'access-control-allow-origin': APP }))
  now += 500_000
  t.ok(cors.answerFields(APP), 'confirmed: counted from the last answer')
  now += 100_001
  t.equal(cors.answerFields(APP), undefined, 'a ttl after the last answer: gone')
})
