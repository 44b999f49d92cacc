// The headers the proxy adds upstream are entered in undici's record of known header names, so undici neither
// lower-cases nor re-validates them per request. The record must map each name to itself, leave undici's own
// entries alone, and change nothing the upstream receives: each identity's own values, never a client's copy.
import t from 'tap'
import constants from 'undici/lib/core/constants.js'
import { ADDED_REQUEST_HEADERS } from '../../src/proxy/headers.ts'
import { registerAddedHeaderNames } from '../../src/proxy/undici-pool.ts'
import type { Identity } from '../../src/types.ts'
import { startProxy, TestPipeline } from '../helpers/proxy-fixture.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.test('every added header name is in the record as itself, undici entries untouched', async (t) => {
  const record: Record<string, string | undefined> = Object.create(null)
  record.Authorization = 'authorization'
  record['x-request-id'] = 'kept'
  t.equal(registerAddedHeaderNames(record), true)
  for (const name of ADDED_REQUEST_HEADERS) {
    t.equal(name, name.toLowerCase(), `${name} is lower-case`)
    if (name !== 'x-request-id') t.equal(record[name], name, `${name} maps to itself`)
  }
  t.equal(record['x-request-id'], 'kept', 'an existing entry is not overwritten')
  t.equal(record.Authorization, 'authorization')
  t.equal(registerAddedHeaderNames(undefined), false, 'no record (another undici): nothing to do')
  t.ok(ADDED_REQUEST_HEADERS.includes('x-nhi-identity'))
  t.notOk(ADDED_REQUEST_HEADERS.includes('expect'), 'expect is dropped, never added')

  const live = (constants as { headerNameLowerCasedRecord: Record<string, string | undefined> })
    .headerNameLowerCasedRecord
  for (const name of ADDED_REQUEST_HEADERS) t.equal(live[name], name, `undici knows ${name}`)
})

const identity = (name: string, kind: Identity['kind'], verified: boolean): Identity => ({
  name,
  kind,
  source: 'jwt',
  verified,
  attributes: {},
})

t.test('the upstream sees each identity’s own headers, never a client’s copy', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const alice = identity('alice@example.com', 'human', true)
  const robot = identity('svc-orders', 'service', false)
  const pipeline = new TestPipeline((req) => ({
    identity: req.headers['x-who'] === 'robot' ? robot : alice,
  }))
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  const spoofs = {
    'x-nhi-identity': 'admin',
    'X-NHI-Kind': 'human',
    x_nhi_verified: 'true',
    'X-Nhi-Source': 'mtls',
    'x-request-id': 'client-rid',
  }
  for (const who of ['alice', 'robot', 'alice', 'robot']) {
    const res = await fetch(`${url}/h`, { headers: { ...spoofs, 'x-who': who } })
    await res.arrayBuffer()
    const h = up.received.at(-1)!.headers
    const expected = who === 'robot' ? robot : alice
    t.equal(h['x-nhi-identity'], expected.name, `${who}: identity`)
    t.equal(h['x-nhi-kind'], expected.kind, `${who}: kind`)
    t.equal(h['x-nhi-source'], 'jwt', `${who}: source`)
    t.equal(h['x-nhi-verified'], String(expected.verified), `${who}: verified`)
    t.equal(h.x_nhi_verified, undefined, `${who}: the underscore spelling is dropped`)
    t.equal(h['x-request-id'], 'client-rid', `${who}: a valid client request id is kept`)
    t.equal(h['x-forwarded-proto'], 'http')
    t.equal(h['x-forwarded-for'], '127.0.0.1')
    t.equal(h['x-forwarded-host'], h.host, `${who}: forwarded host is the client's host`)
    t.match(h.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
  }
})
