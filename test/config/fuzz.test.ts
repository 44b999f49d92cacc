// Property tests for the config loader: a hot reload feeds it whatever is on disk (half-written files,
// editor swaps, typos), so it must never throw, and every error must point at a real place in the text.
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import t from 'tap'
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml'
import { type LoadResult, parseConfigText } from '../../src/config/loader.ts'
import { checkProperty } from '../helpers/property.ts'
import { ROOT } from '../helpers/sidecar.ts'

const CONFIG_DIR = join(ROOT, 'config')
const valid: string[] = [
  readFileSync(join(CONFIG_DIR, 'nhi-proxy.yaml'), 'utf8'),
  ...readdirSync(join(CONFIG_DIR, 'examples'))
    .filter((f) => f.endsWith('.yaml') && !f.endsWith('.test.yaml'))
    .map((f) => readFileSync(join(CONFIG_DIR, 'examples', f), 'utf8')),
]

/** Never thrown, well-formed result: errors located inside the text, a complete config otherwise. */
function wellFormed(text: string, r: LoadResult): boolean {
  const lines = text.split('\n').length
  for (const d of [...(r.ok ? [] : r.errors), ...r.warnings]) {
    if (!Number.isInteger(d.line) || !Number.isInteger(d.col)) return false
    if (d.line < 1 || d.line > lines + 1 || d.col < 1) return false
    if (typeof d.message !== 'string' || d.message.length === 0) return false
  }
  if (!r.ok) return r.errors.length > 0
  const c = r.config
  return (
    typeof c.service === 'string' &&
    typeof c.upstream === 'string' &&
    Array.isArray(c.identities) &&
    typeof c.timeouts.headers === 'number' &&
    typeof c.jwt.clockSkew === 'number'
  )
}

function load(text: string): LoadResult {
  return parseConfigText(text, 'fuzz.yaml')
}

t.test('the shipped configs load (the mutation tests start from valid text)', async (t) => {
  t.ok(valid.length >= 2)
  for (const text of valid) t.ok(load(text).ok, 'valid')
})

const yamlish = fc.constantFrom(
  ...[
    ':',
    '-',
    ' ',
    '  ',
    '\n',
    '\t',
    '#',
    '"',
    "'",
    '{',
    '}',
    '[',
    ']',
    ',',
    '&a',
    '*a',
    '!!',
    '|',
    '>',
    '%',
  ],
  ...['service', 'listen', 'http', 'upstream', 'jwt', 'issuers', 'identities', 'match', 'name', 'kind'],
  ...['30s', '0', '-1', '1e309', 'null', 'true', '~', '<<', '0.0.0.0:8080', 'http://x', '{a}', '**'],
)

t.test('arbitrary YAML-ish text never throws and errors carry line:col inside the text', async (t) => {
  checkProperty(
    t,
    'random text',
    fc.property(fc.string({ maxLength: 200 }), (text) => wellFormed(text, load(text))),
    400,
  )
  checkProperty(
    t,
    'random YAML tokens',
    fc.property(fc.array(yamlish, { maxLength: 60 }), (tokens) => {
      const text = tokens.join('')
      return wellFormed(text, load(text))
    }),
    400,
  )
})

type Mutation =
  | { op: 'delete'; at: number; len: number }
  | { op: 'insert'; at: number; text: string }
  | { op: 'duplicateLine'; line: number }
  | { op: 'swapLines'; a: number; b: number }
  | { op: 'indent'; line: number; by: number }
  | { op: 'truncate'; at: number }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 8 }) }),
  fc.record({
    op: fc.constant('insert' as const),
    at: fc.nat(),
    text: fc.oneof(yamlish, fc.string({ maxLength: 6 })),
  }),
  fc.record({ op: fc.constant('duplicateLine' as const), line: fc.nat() }),
  fc.record({ op: fc.constant('swapLines' as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ op: fc.constant('indent' as const), line: fc.nat(), by: fc.integer({ min: -2, max: 3 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
)

function mutate(text: string, m: Mutation): string {
  const lines = text.split('\n')
  const li = (n: number) => n % lines.length
  switch (m.op) {
    case 'delete': {
      const at = m.at % (text.length + 1)
      return text.slice(0, at) + text.slice(at + m.len)
    }
    case 'insert': {
      const at = m.at % (text.length + 1)
      return text.slice(0, at) + m.text + text.slice(at)
    }
    case 'duplicateLine':
      lines.splice(li(m.line), 0, lines[li(m.line)]!)
      return lines.join('\n')
    case 'swapLines': {
      const a = li(m.a)
      const b = li(m.b)
      ;[lines[a], lines[b]] = [lines[b]!, lines[a]!]
      return lines.join('\n')
    }
    case 'indent': {
      const i = li(m.line)
      const l = lines[i]!
      lines[i] = m.by >= 0 ? ' '.repeat(m.by) + l : l.replace(new RegExp(`^ {0,${-m.by}}`), '')
      return lines.join('\n')
    }
    case 'truncate':
      return text.slice(0, m.at % (text.length + 1))
  }
}

t.test('mutated valid configs (typos, half-written files, bad indentation) never throw', async (t) => {
  checkProperty(
    t,
    'text mutations',
    fc.property(fc.constantFrom(...valid), fc.array(mutation, { minLength: 1, maxLength: 4 }), (base, ms) => {
      const text = ms.reduce(mutate, base)
      return wellFormed(text, load(text))
    }),
    150,
  )
})

// Structural mutations: replace any value in a valid config with any JSON value.
function paths(v: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [prefix]
  if (Array.isArray(v)) for (const [i, x] of v.entries()) out.push(...paths(x, [...prefix, i]))
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...prefix, k]))
  return out
}

function setAt(root: unknown, path: (string | number)[], value: unknown): unknown {
  if (path.length === 0) return value
  const copy = structuredClone(root) as Record<string | number, unknown>
  let node = copy
  for (const k of path.slice(0, -1)) node = node[k] as Record<string | number, unknown>
  node[path[path.length - 1]!] = value
  return copy
}

t.test('valid configs with any value replaced by any JSON value never throw', async (t) => {
  const docs = valid.map((text) => parseYaml(text) as unknown).filter((d) => d && typeof d === 'object')
  checkProperty(
    t,
    'value replacement',
    fc.property(
      fc.constantFrom(...docs),
      fc.nat(),
      fc.jsonValue({ maxDepth: 3 }),
      fc.oneof(fc.constant(undefined), fc.string({ maxLength: 12 })),
      (doc, pick, value, extraKey) => {
        const all = paths(doc)
        const path = all[pick % all.length]!
        let mutated = setAt(doc, path, value)
        if (extraKey !== undefined && mutated && typeof mutated === 'object' && !Array.isArray(mutated))
          mutated = { ...(mutated as object), [extraKey]: 1 }
        const text = stringifyYaml(mutated)
        return wellFormed(text, load(text))
      },
    ),
    150,
  )
})

t.test('the loader rejects what it must (so the properties above are not vacuous)', async (t) => {
  const r = load('service: x\nlisten:\n  htp: 0.0.0.0:8080\n')
  t.notOk(r.ok, 'unknown key')
  if (!r.ok) t.match(r.errors[0], { line: 3, col: 3 }, 'located at the key')
  const dup = load('service: a\nservice: b\n')
  t.notOk(dup.ok, 'duplicate key')
  t.notOk(load('timeouts:\n  headers: soon\n').ok, 'bad duration')
  t.notOk(load('[1, 2').ok, 'unterminated flow sequence')
})
