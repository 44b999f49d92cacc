import t from 'tap'
import {
  completed,
  field,
  h1Raw,
  merged,
  RAW_CLIENTS,
  recordingUpstreams,
  sideFor,
  spoofed,
  spoofedComesTo,
} from '../helpers/header-spellings.ts'

t.setTimeout(120_000)

const ruleOn = (header: string) => ({
  service: 'tenants',
  identities: [{ name: 'tenant-{t}', kind: 'human', match: { header: { [header]: '{t}' } } }],
})

const upstreams = await recordingUpstreams(t)
const sides = [
  await sideFor(t, 'towards an HTTP/1.1 upstream', upstreams.h1, ruleOn('x-tenant')),
  await sideFor(t, 'towards an h2c upstream', upstreams.h2c, ruleOn('x-tenant')),
]

const clients = RAW_CLIENTS.map((c) => ({ ...c, variant: c.name === 'HTTP/1.1' ? 'X_Tenant' : 'x_tenant' }))

t.test('a rule-named header under another spelling never reaches the upstream', async (t) => {
  for (const s of sides) {
    for (const c of clients) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`

      // control: the exact name alone is the rule's and the upstream's
      let before = await spoofed(s)
      let label = `${c.name} exact`
      t.equal(await c.send(s.port, label, [['x-tenant', 'acme']]), c.ok, what('exact name answered'))
      let got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'ua:tenant-acme', what('the rule reads the exact name'))
      t.same(merged(got.headers, 'x-tenant'), [['x-tenant', 'acme']], what('and the upstream gets it'))

      // the other spelling alone: no rule read it, so neither may the upstream
      label = `${c.name} variant`
      t.equal(await c.send(s.port, label, [[c.variant, 'globex']]), c.ok, what('variant answered'))
      got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'anonymous', what('the variant is not read'))
      t.same(merged(got.headers, 'x-tenant'), [], what('the variant is stripped'))
      // requests are recorded as their responses end: once the variant's count shows, the exact one's would
      t.ok(await spoofedComesTo(s, before + 1), what('spoofed_header counted for the variant'))
      t.equal(await spoofed(s), before + 1, what('counted once: for the variant, not for the exact name'))

      // both: the exact name decides and is forwarded, the variant is stripped and counted
      before = await spoofed(s)
      label = `${c.name} both`
      t.equal(
        await c.send(s.port, label, [
          ['x-tenant', 'acme'],
          [c.variant, 'globex'],
        ]),
        c.ok,
        what('both answered'),
      )
      got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'ua:tenant-acme', what('the exact name decides'))
      t.same(
        merged(got.headers, 'x-tenant'),
        [['x-tenant', 'acme']],
        what('only the exact name reaches the upstream'),
      )
      t.ok(await spoofedComesTo(s, before + 1), what('spoofed_header counted next to the exact name'))
    }
  }
})

t.test('a rule-named header never travels as a request trailer', async (t) => {
  for (const s of sides) {
    for (const c of clients) {
      const what = (label: string) => `${s.name}, ${c.name} client, ${label}`
      const label = `${c.name} trailer`
      const answer = await c.send(
        s.port,
        label,
        [],
        [
          ['x-tenant', 'globex'],
          [c.variant, 'globex'],
          ['x-digest', 'sha-256=ok'],
        ],
      )
      t.equal(answer, c.ok, what('answered'))
      const got = await completed(s, label)
      t.equal(field(got.headers, 'x-nhi-identity'), 'anonymous', what('attributed from the header section'))
      t.same(merged(got.trailers, 'x-tenant'), [], what('no spelling of the rule header as a trailer'))
      t.notMatch(field(got.headers, 'trailer') ?? '', /tenant/i, what('nor announced in Trailer'))
      // an h2 client's trailers reach HTTP/2 upstreams only (docs/reference.md "Deviations")
      if (c.name === 'HTTP/1.1' || s.upstream === upstreams.h2c)
        t.equal(field(got.trailers, 'x-digest'), 'sha-256=ok', what('other trailers still pass'))
    }
  }
})

t.test('a reload that names another header moves the protection with it', async (t) => {
  const s = sides[0]!
  t.ok(
    await s.sidecar.reload({ ...ruleOn('x-region'), upstream: s.upstream.url }),
    'reloaded to a rule on x-region',
  )
  const before = await spoofed(s)
  t.equal(
    await h1Raw(s.port, 'reloaded', [
      ['x-region', 'eu'],
      ['X_Region', 'us'],
      ['X_Tenant', 'globex'],
    ]),
    'HTTP/1.1 200 OK',
  )
  const got = await completed(s, 'reloaded')
  t.equal(field(got.headers, 'x-nhi-identity'), 'ua:tenant-eu', 'the new rule reads x-region')
  t.same(merged(got.headers, 'x-region'), [['x-region', 'eu']], 'the new rule header is guarded')
  t.same(merged(got.headers, 'x-tenant'), [['x_tenant', 'globex']], 'a header no rule names any more passes')
  t.ok(await spoofedComesTo(s, before + 1), 'spoofed_header after the reload')
  const trailer = await h1Raw(
    s.port,
    'reloaded trailer',
    [],
    [
      ['X_Region', 'us'],
      ['x-tenant', 'globex'],
    ],
  )
  t.equal(trailer, 'HTTP/1.1 200 OK')
  const sent = await completed(s, 'reloaded trailer')
  t.same(merged(sent.trailers, 'x-region'), [], 'the new rule header is withheld as a trailer')
  t.same(
    merged(sent.trailers, 'x-tenant'),
    [['x-tenant', 'globex']],
    'the old one is an ordinary trailer again',
  )
})
