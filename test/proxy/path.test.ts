// normalizePath (src/proxy/path.ts): the one path rules, policy, metrics and the upstream all see.
import fc from 'fast-check'
import t from 'tap'
import { normalizePath } from '../../src/proxy/path.ts'
import { checkProperty } from '../helpers/property.ts'

t.test('examples', async (t) => {
  const cases: [string, string | undefined][] = [
    ['/', '/'],
    ['/a/b', '/a/b'],
    ['/a/b/', '/a/b/'],
    ['/%61dmin', '/admin'],
    ['/%41%2D%5f%7E%30', '/A-_~0'],
    ['/caf%c3%a9', '/caf%C3%A9'],
    ['/a%20b', '/a%20b'],
    ['/a%3bb', '/a%3Bb'],
    // the characters a segment holds as they are (RFC 3986 §3.3), which servers decode before routing
    ['/v1/orders/1%3Acancel', '/v1/orders/1:cancel'],
    ['/%40me/%24batch', '/@me/$batch'],
    ['/%21%26%27%28%29%2a%2B%2C%3D', "/!&'()*+,="],
    ['/a%3Fb', '/a%3Fb'],
    ['/a%25b', '/a%25b'],
    ['/a/./b/../c', '/a/c'],
    ['/a/b/..', '/a/'],
    ['/a/.', '/a/'],
    ['/..', '/'],
    ['/../../a', '/a'],
    ['/a/%2e%2e/b', '/b'],
    ['/a/.%2E/b', '/b'],
    ['//a///b//', '/a/b/'],
    ['/a;x=1', '/a'],
    ['/a;x=1/b;y', '/a/b'],
    ['/a/..;/b', '/b'],
    ['/;x/a', '/a'],
    ['/.well-known/x', '/.well-known/x'],
    ['/a.b/c..d/...', '/a.b/c..d/...'],
    ['/%2f', undefined],
    ['/%2F', undefined],
    ['/%5c', undefined],
    ['/a\\b', undefined],
    ['/%00', undefined],
    ['/%0a', undefined],
    ['/%7f', undefined],
    ['/%', undefined],
    ['/%4', undefined],
    ['/%g0', undefined],
    ['/a#b', undefined],
    // raw bytes an HTTP/2 :path can carry (read as latin1) and the HTTP/1.1 parser refuses
    ['/caf\u00c3\u00a9', undefined],
    ['/caf\u00e9', undefined],
    ['/a b', undefined],
    ['/a\tb', undefined],
    ['/a\u007f', undefined],
    ['a/b', undefined],
    ['', undefined],
  ]
  for (const [input, expected] of cases) t.equal(normalizePath(input), expected, JSON.stringify(input))
})

t.test('a normal path is returned as the same string (the fast path)', async (t) => {
  const p = '/api/v1/orders/123'
  t.equal(normalizePath(p), p)
})

const segment = fc.oneof(
  fc.constantFrom(
    '.',
    '..',
    '',
    '%2e',
    '%2E.',
    ';p=1',
    'a;b',
    '%41',
    '%c3%a9',
    '%7e',
    '%25',
    '%3b',
    '%2f',
    '\\',
  ),
  fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,=:@-]{1,5}$/),
)
const path = fc.array(segment, { maxLength: 8 }).map((s) => `/${s.join('/')}`)

t.test('properties', async (t) => {
  checkProperty(
    t,
    'normalizing twice changes nothing',
    fc.property(path, (p) => {
      const n = normalizePath(p)
      return n === undefined || normalizePath(n) === n
    }),
  )
  checkProperty(
    t,
    'a normalized path has no dot segments, empty segments, parameters or encoded unreserved bytes',
    fc.property(path, (p) => {
      const n = normalizePath(p)
      if (n === undefined) return true
      const segs = n.split('/').slice(1)
      const inner = n.endsWith('/') ? segs.slice(0, -1) : segs
      return (
        n.startsWith('/') &&
        inner.every((s) => s !== '' && s !== '.' && s !== '..') &&
        !n.includes(';') &&
        !/%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f])/.test(n) &&
        !/%(?:4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2D|2E|5F|7E)/.test(n)
      )
    }),
  )
  checkProperty(
    t,
    'encoded "/" and "\\\\", backslashes and invalid escapes are always refused',
    fc.property(path, (p) => {
      const ambiguous = /%2f|%5c|\\|%(?![0-9a-fA-F]{2})/i.test(p)
      return !ambiguous || normalizePath(p) === undefined
    }),
  )
})
