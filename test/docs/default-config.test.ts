// config/nhi-proxy.yaml says "Every key is shown with its default" and docs/reference.md's config table gives
// each key's default. Both are read by operators who copy them, so both are checked against the schema itself:
// the file loads to exactly the built-in defaults, names every key of the schema (written out, or commented
// where it has no fixed default), lists each enum's values as the schema has them, and every default the
// reference's table states is the one the schema gives.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parseConfigText } from '../../src/config/loader.ts'
import { configJsonSchema, defaultConfig } from '../../src/config/schema.ts'
import { parseDuration } from '../../src/util/duration.ts'
import { ROOT } from '../helpers/sidecar.ts'

const FILE = 'config/nhi-proxy.yaml'
const text = readFileSync(join(ROOT, FILE), 'utf8')
const doc = readFileSync(join(ROOT, 'docs/reference.md'), 'utf8')

interface JsonSchema {
  properties?: Record<string, JsonSchema>
  items?: JsonSchema
  anyOf?: JsonSchema[]
  enum?: unknown[]
}

/** every key of the schema as a dotted path (`[]` for an array's items), with its enum when it has one */
function keyPaths(schema: JsonSchema, prefix = '', into = new Map<string, string[] | undefined>()) {
  for (const [name, sub] of Object.entries(schema.properties ?? {})) {
    const path = `${prefix}${name}`
    const alternatives = [sub, ...(sub.anyOf ?? []), ...(sub.anyOf ?? []).flatMap((a) => a.anyOf ?? [])]
    const values = alternatives.flatMap((a) => (a.enum ?? []) as string[])
    into.set(path, values.length ? values : undefined)
    for (const alt of alternatives) {
      keyPaths(alt, `${path}.`, into)
      if (alt.items) {
        keyPaths(alt.items, `${path}[].`, into)
        for (const item of alt.items.anyOf ?? []) keyPaths(item, `${path}[].`, into)
      }
    }
  }
  return into
}

const paths = keyPaths(configJsonSchema() as JsonSchema)
const topLevel = [...paths.keys()].filter((p) => !/[.[]/.test(p))

/** the lines of one top-level key: from its line (written or commented out) to another top-level key's */
function section(top: string): string | undefined {
  const lines = text.split('\n')
  const isTop = (line: string) => topLevel.find((k) => new RegExp(`^(?:# ?)?${k}:`).test(line))
  const start = lines.findIndex((l) => isTop(l) === top)
  if (start < 0) return undefined
  let end = start + 1
  while (end < lines.length && [undefined, top].includes(isTop(lines[end]!))) end++
  return lines.slice(start, end).join('\n')
}

t.test(`${FILE} loads to the built-in defaults`, async (t) => {
  const loaded = parseConfigText(text, FILE)
  if (!loaded.ok) return t.fail(JSON.stringify(loaded.errors))
  t.same(loaded.warnings, [])
  const { service: _s1, ...fromFile } = loaded.config
  const { service: _s2, ...defaults } = defaultConfig()
  t.same(fromFile, defaults)
})

t.test(`${FILE} shows every key of the schema`, async (t) => {
  t.ok(paths.size > 100, `${paths.size} key paths`)
  for (const [path] of paths) {
    const [top] = path.split(/[.[]/)
    const lines = section(top!)
    if (lines === undefined) {
      t.fail(`top-level key ${top} (for ${path}) is not in ${FILE}`)
      continue
    }
    const leaf = path.slice(path.lastIndexOf('.') + 1)
    // an array item's key may be shown in an example entry or named in a comment's list of them
    const pattern = path.includes('[]')
      ? new RegExp(`(?<![\\w.-])${leaf}(?![\\w-])`)
      : new RegExp(`(?<![\\w.-])${leaf}:`)
    t.match(lines, pattern, `${path} is shown under ${top}`)
  }
})

t.test(`the value lists in ${FILE}'s comments are the schema's`, async (t) => {
  // `key: value # a | b | c`, `# key: value # a | b | c` and `key (a | b | c)`
  const lists = [
    ...text.matchAll(/(?<![\w.-])([a-zA-Z]+):[^#\n]*#\s*([\w:-]+(?:\s*\|\s*[\w:-]+)+)\s*$/gm),
    ...text.matchAll(/(?<![\w.-])([a-zA-Z]+) \(([\w:-]+(?:\s*\|\s*[\w:-]+)+)\)/g),
  ]
  let checked = 0
  for (const [, key, list] of lists) {
    const enums = [...paths].filter(
      ([p, v]) => v && p.endsWith(key!) && /(^|[.\]])$/.test(p.slice(0, -key!.length)),
    )
    if (enums.length === 0) continue
    const written = list!.split('|').map((v) => v.trim())
    t.ok(
      enums.some(([, values]) => [...values!].sort().join() === [...written].sort().join()),
      `${key}: ${written.join(' | ')} is the schema's ${enums.map(([, v]) => v!.join(' | ')).join(' or ')}`,
    )
    checked++
  }
  t.ok(checked >= 7, `${checked} value lists checked`)
})

/** A default as the reference writes it, read as the config would read it. */
function documentedValue(cell: string, actual: unknown): unknown {
  const m = /^`([^`]*)`$/.exec(cell)
  if (!m) return undefined
  const v = m[1]!
  if (typeof actual === 'number' && /^\d*\.?\d+(ms|s|m|h|d)$/.test(v)) return parseDuration(v)
  if (v === '[]') return []
  if (v === 'true' || v === 'false') return v === 'true'
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v)
  return v
}

t.test("every default in the reference's config table is the schema's", async (t) => {
  const table = doc.slice(doc.indexOf('## Config file'), doc.indexOf('### `jwt.issuers[]`'))
  const defaults = defaultConfig() as unknown as Record<string, unknown>
  let checked = 0
  for (const row of table.split('\n').filter((l) => l.startsWith('| `'))) {
    const [keyCell, defaultCell] = row.slice(2).split(' | ')
    let prefix = ''
    for (let key of [...keyCell!.matchAll(/`([^`]+)`/g)].map((k) => k[1]!)) {
      if (key.startsWith('.')) key = prefix + key
      else prefix = key.slice(0, key.lastIndexOf('.'))
      key = key.replace(/\[\]$/, '')
      t.ok(paths.has(key), `${key} is a key of the schema`)
      let actual: unknown = defaults
      for (const part of key.split('.')) actual = (actual as Record<string, unknown> | undefined)?.[part]
      const cell = defaultCell!.trim()
      if (cell.startsWith('—')) {
        t.equal(actual, undefined, `${key}: no default`)
        checked++
        continue
      }
      const documented = documentedValue(cell, actual)
      // `$NHI_SERVICE`, `maxIdentities / 4`, `[0.005 … 10]`, "Google, Bing, Apple", an optional block's
      // defaults: said in words, not a value
      if (documented === undefined || actual === undefined || String(documented).includes(' ')) continue
      t.same(actual, documented, `${key}: ${cell}`)
      checked++
    }
  }
  t.ok(checked >= 70, `${checked} defaults checked`)
})
