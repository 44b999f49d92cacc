import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { schemaText } from '../../src/cli/schema.ts'
import { runCli } from '../helpers/sidecar.ts'

t.test('schema/nhi-proxy.schema.json is up to date with the config schema', async (t) => {
  const stored = readFileSync('schema/nhi-proxy.schema.json', 'utf8')
  t.equal(stored, `${schemaText()}\n`, 'regenerate with: nhi-proxy schema > schema/nhi-proxy.schema.json')
  const schema = JSON.parse(stored)
  t.equal(schema.type, 'object')
  t.equal(schema.additionalProperties, false, 'unknown keys are rejected by editors too')
  t.ok(schema.properties.identities)
  t.notOk(schema.properties.service.default, 'no host-dependent default')
})

t.test('`nhi-proxy schema` prints it and exits 0', async (t) => {
  const r = await runCli(['schema'])
  t.equal(r.code, 0)
  t.equal(r.stdout, `${schemaText()}\n`)
})

t.test('every example config points editors at the schema', async (t) => {
  for (const f of readdirSync('config/examples').filter(
    (x) => x.endsWith('.yaml') && !x.endsWith('.test.yaml'),
  )) {
    const first = readFileSync(`config/examples/${f}`, 'utf8').split('\n')[0]
    t.equal(first, '# yaml-language-server: $schema=../../schema/nhi-proxy.schema.json', f)
  }
  t.equal(
    readFileSync('config/nhi-proxy.yaml', 'utf8').split('\n')[0],
    '# yaml-language-server: $schema=../schema/nhi-proxy.schema.json',
  )
})
