// docs/reference.md documents the public interface; this keeps it in step with the code: every config key
// of the schema, every metric family, CLI command, admin endpoint, auth-failure reason and anomaly type the
// code has is named there.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { AGENT_PURPOSES } from '../../src/identity/agents.ts'
import { ALL_FAILURE_REASONS } from '../../src/identity/sources/index.ts'
import { ANOMALY_TYPES } from '../../src/types.ts'
import { ROOT } from '../helpers/sidecar.ts'

const doc = readFileSync(join(ROOT, 'docs/reference.md'), 'utf8')
const source = (path: string) => readFileSync(join(ROOT, path), 'utf8')
const literal = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
/** `name` inside backticks, alone or as part of a dotted key or a command line */
const named = (name: string) =>
  new RegExp(`\`[^\`\\n]*(?<![\\w-])${literal(name)}(?![\\w-])[^\`\\n]*\``).test(doc)

interface JsonSchema {
  properties?: Record<string, JsonSchema>
  items?: JsonSchema
  anyOf?: JsonSchema[]
}

function propertyNames(schema: JsonSchema, into = new Set<string>()): Set<string> {
  for (const [name, sub] of Object.entries(schema.properties ?? {})) {
    into.add(name)
    propertyNames(sub, into)
  }
  if (schema.items) propertyNames(schema.items, into)
  for (const alt of schema.anyOf ?? []) propertyNames(alt, into)
  return into
}

t.test('every config key is documented', async (t) => {
  const schema = JSON.parse(source('schema/nhi-proxy.schema.json')) as JsonSchema
  const keys = propertyNames(schema)
  t.ok(keys.size > 50, `${keys.size} keys in the schema`)
  for (const key of keys) t.ok(named(key), `config key ${key}`)
  for (const top of Object.keys(schema.properties ?? {})) t.ok(named(top), `top-level key ${top}`)
})

t.test('every metric family is documented', async (t) => {
  const text = source('src/telemetry/metrics.ts')
  const families = [
    ...[...text.matchAll(/counter\(\s*'(nhi_[a-z_]+)'/g)].map((m) => `${m[1]}_total`),
    ...[...text.matchAll(/gauge\(\s*'(nhi_[a-z_]+)'/g)].map((m) => m[1]!),
    ...[...text.matchAll(/name: '(nhi_[a-z_]+)'/g)].map((m) => m[1]!),
  ]
  t.ok(families.length >= 20, `${families.length} families in the code`)
  for (const name of families) t.ok(named(name), name)
  for (const reason of ALL_FAILURE_REASONS) t.ok(named(reason), `auth failure reason ${reason}`)
  for (const type of ANOMALY_TYPES) t.ok(named(type), `anomaly type ${type}`)
})

t.test('every CLI command and admin endpoint is documented', async (t) => {
  const commands = [...source('src/cli/main.ts').matchAll(/\.command\('([\w-]+)'\)/g)].map((m) => m[1]!)
  t.ok(commands.length >= 7, `${commands.length} commands`)
  for (const command of commands)
    t.match(doc, new RegExp(`^\\| \`${literal(command)}(?: |\`)`, 'm'), `command ${command} has a row`)
  const paths = [...source('src/admin/server.ts').matchAll(/case '(\/[a-z]*)'/g)].map((m) => m[1]!)
  t.ok(paths.length >= 9, `${paths.length} admin paths`)
  for (const path of paths) t.ok(named(path), `admin path ${path}`)
})

t.test('every AI-agent purpose and attribute is documented', async (t) => {
  for (const purpose of AGENT_PURPOSES) t.ok(named(purpose), `agent purpose ${purpose}`)
  for (const attribute of ['agent_operator', 'agent_purpose']) t.ok(named(attribute), attribute)
})
