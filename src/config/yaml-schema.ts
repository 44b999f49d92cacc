// YAML text → value validated by a zod schema, with every problem mapped back to FILE:LINE:COL.
// Used for the config file and for rule-test files, so both report errors the same way.
import {
  type Alias,
  type Document,
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
  visit,
} from 'yaml'
import { en } from 'zod/locales'
import * as z from 'zod/mini'
import { type Diagnostic, issueMessage, nearest, type Severity } from './diagnostics.ts'

// zod/mini reports every issue as "Invalid input": the product's own words (issueMessage) for what a schema
// does not word itself, zod's English ones for what that leaves. Imported by name, so a bundle keeps only this
// one of zod's locales.
z.config(en())
z.config({ customError: issueMessage })

export type PathKey = string | number
export type Path = readonly PathKey[]

export interface ParsedYaml<T> {
  value?: T
  errors: Diagnostic[]
  /** maps a config path (as zod reports it) to the closest YAML position */
  locate(path: Path, at?: 'key' | 'value'): { line: number; col: number }
}

// Zod internals are read only to derive the allowed keys at a path (for "did you mean"), so hints stay
// in sync with the schema instead of a hand-kept list.
interface ZodDefLike {
  type: string
  shape?: Record<string, { _zod: { def: ZodDefLike } }>
  innerType?: { _zod: { def: ZodDefLike } }
  in?: { _zod: { def: ZodDefLike } }
  element?: { _zod: { def: ZodDefLike } }
  valueType?: { _zod: { def: ZodDefLike } }
  options?: { _zod: { def: ZodDefLike } }[]
}

function unwrap(def: ZodDefLike): ZodDefLike {
  let d = def
  for (let i = 0; i < 20; i++) {
    const next = d.innerType ?? (d.type === 'pipe' ? d.in : undefined)
    if (!next) break
    d = next._zod.def
  }
  return d
}

function defAt(schema: z.ZodMiniType, path: Path): ZodDefLike | undefined {
  let def: ZodDefLike | undefined = unwrap((schema as unknown as { _zod: { def: ZodDefLike } })._zod.def)
  for (const key of path) {
    if (!def) return undefined
    if (def.type === 'object' && typeof key === 'string') def = def.shape?.[key]?._zod.def
    else if (def.type === 'array') def = def.element?._zod.def
    else if (def.type === 'record') def = def.valueType?._zod.def
    else if (def.type === 'union')
      def = def.options?.map((o) => unwrap(o._zod.def)).find((o) => o.type === 'object')
    else return undefined
    if (def) def = unwrap(def)
  }
  if (def?.type === 'union')
    def = def.options?.map((o) => unwrap(o._zod.def)).find((o) => o.type === 'object')
  return def
}

/** The keys a strict object accepts at `path` in `schema`. */
export function allowedKeys(schema: z.ZodMiniType, path: Path): string[] {
  const def = defAt(schema, path)
  return def?.type === 'object' && def.shape ? Object.keys(def.shape) : []
}

export function pathToString(path: Path): string {
  let s = ''
  for (const k of path) s += typeof k === 'number' ? `[${k}]` : s ? `.${k}` : k
  return s
}

function describeReceived(message: string): string {
  return message.replace(/^Invalid input: /, '').replace(/^Invalid option: /, '')
}

/**
 * the tags of YAML 1.2's core schema, which resolve plain values: one whose value does not fit is unresolved.
 * (YAML 1.1's !!binary, !!timestamp, !!set… resolve, to values no config key takes: the schema says so.)
 */
const CORE_TAGS = new Set(['!!str', '!!int', '!!float', '!!bool', '!!null', '!!map', '!!seq'])

export function parseYamlWith<S extends z.ZodMiniType>(
  text: string,
  file: string,
  schema: S,
): ParsedYaml<z.output<S>> & { raw?: unknown } {
  const lineCounter = new LineCounter()
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true })
  const pos = (offset: number) => {
    const p = lineCounter.linePos(Math.max(0, Math.min(offset, text.length)))
    return { line: p.line, col: p.col }
  }
  const diag = (
    offset: number,
    message: string,
    hint?: string,
    severity: Severity = 'error',
  ): Diagnostic => ({
    file,
    ...pos(offset),
    message,
    hint,
    severity,
  })

  const locate = (path: Path, at: 'key' | 'value' = 'value') => {
    let node: unknown = doc.contents
    let offset = (doc.contents as Node | null)?.range?.[0] ?? 0
    for (let i = 0; i < path.length; i++) {
      const key = path[i]!
      if (isMap(node)) {
        const pair = node.items.find(
          (p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(key),
        )
        if (!pair) break
        const keyOffset = (pair.key as Node).range?.[0] ?? offset
        const valueNode = pair.value as Node | null
        if ((at === 'key' && i === path.length - 1) || !valueNode?.range) return pos(keyOffset)
        node = valueNode
        offset = valueNode.range[0]
      } else if (isSeq(node) && typeof key === 'number') {
        const item = node.items[key] as Node | undefined
        if (!item?.range) break
        node = item
        offset = item.range[0]
      } else break
    }
    return pos(offset)
  }

  const errors: Diagnostic[] = []
  for (const e of doc.errors) errors.push(diag(e.pos[0], `YAML syntax error: ${e.message.split('\n')[0]}`))
  if (errors.length) return { errors, locate }

  // The yaml library only warns of a tag it cannot resolve and reads its value as a string: `!env TOKEN`
  // would be the text "TOKEN" as a secret, `!!int 127.0.0.1:0` an address typed as a number. Refused.
  for (const w of doc.warnings) {
    const tag = /^Unresolved tag: (\S+)/.exec(w.message)?.[1]?.replace(/^tag:yaml\.org,2002:/, '!!')
    if (tag === undefined) errors.push(diag(w.pos[0], `YAML error: ${w.message.split('\n')[0]}`))
    else
      errors.push(
        diag(
          w.pos[0],
          CORE_TAGS.has(tag)
            ? `YAML tag ${tag} does not fit its value`
            : `YAML tag ${tag} is not supported: the config is plain YAML, which gives a tag no meaning`,
          'remove the tag, and quote the value if it is text',
        ),
      )
  }
  if (errors.length) return { errors, locate }

  const alias = unresolvedAlias(doc)
  if (alias)
    return {
      errors: [
        diag(
          alias.range?.[0] ?? 0,
          `YAML error: alias *${alias.source} names no anchor set before it`,
          `set &${alias.source} on a value above it`,
        ),
      ],
      locate,
    }

  let raw: unknown
  try {
    raw = doc.toJS({ maxAliasCount: 100 })
  } catch (e) {
    return { errors: [diag(0, `YAML error: ${(e as Error).message}`)], locate }
  }
  if (raw === null || raw === undefined) raw = {}
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    return {
      errors: [diag((doc.contents as Node | null)?.range?.[0] ?? 0, 'expected a mapping of keys')],
      locate,
    }
  }

  const result = schema.safeParse(raw)
  if (result.success) return { value: result.data, errors, locate, raw }
  for (const issue of result.error.issues) {
    const path = issue.path as PathKey[]
    const where = pathToString(path)
    if (issue.code === 'unrecognized_keys') {
      const allowed = allowedKeys(schema, path)
      for (const key of issue.keys) {
        const guess = nearest(key, allowed)
        const p = locate([...path, key], 'key')
        errors.push({
          file,
          ...p,
          message: `unknown key "${key}"${where ? ` in ${where}` : ''}`,
          hint: guess
            ? `did you mean "${guess}"?`
            : allowed.length
              ? `valid keys: ${allowed.join(', ')}`
              : undefined,
          severity: 'error',
        })
      }
      continue
    }
    const p = locate(path)
    let message = describeReceived(issue.message)
    let hint: string | undefined
    if (issue.code === 'invalid_value') {
      const values = issue.values.map(String)
      const got = getIn(raw, path)
      const guess = typeof got === 'string' ? nearest(got, values) : undefined
      message = `invalid value${got !== undefined ? ` ${JSON.stringify(got)}` : ''}`
      hint = `${guess ? `did you mean "${guess}"? ` : ''}one of: ${values.join(', ')}`
    } else if (issue.code === 'invalid_type' && getIn(raw, path) === undefined) {
      message = `missing required key "${String(path[path.length - 1])}"`
    } else if (issue.code === 'custom' && message.startsWith('invalid duration')) {
      message = message.replace(/ \(use e\.g\..*\)$/, '')
      hint = 'durations look like 500ms, 30s, 5m, 24h, 7d or a number of seconds'
    }
    errors.push({ file, ...p, message: where ? `${where}: ${message}` : message, hint, severity: 'error' })
  }
  return { errors, locate, raw }
}

/** The first alias whose anchor is not set before it, which toJS would refuse without saying where. */
function unresolvedAlias(doc: Document): Alias | undefined {
  const anchors = new Set<string>()
  let found: Alias | undefined
  visit(doc, {
    Node: (_key, node) => {
      if (isAlias(node)) {
        if (anchors.has(node.source)) return undefined
        found = node
        return visit.BREAK
      }
      const anchor = (node as { anchor?: string }).anchor
      if (anchor !== undefined) anchors.add(anchor)
      return undefined
    },
  })
  return found
}

function getIn(value: unknown, path: Path): unknown {
  let v = value
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Record<PathKey, unknown>)[k]
  }
  return v
}
