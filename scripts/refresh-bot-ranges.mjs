#!/usr/bin/env node
// Regenerates src/identity/bots/ranges-snapshot.json from the crawler IP range files the operators publish
// (src/identity/bots/range-files.json: the files, and the products each vouches for where an operator
// publishes one per product). Refresh: run `node scripts/refresh-bot-ranges.mjs` where those URLs are
// reachable, review, commit. A file that cannot be fetched keeps its previous snapshot entry (and is
// reported); the run fails only when nothing could be fetched. Options: --out PATH (another output file),
// --url OPERATOR[:PRODUCT,PRODUCT…]=URL (repeatable: fetch these instead of the published list, e.g. a
// mirror; without products, a file named as the operator names one vouches for that file's products).
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const FILES = JSON.parse(readFileSync(join(root, 'src/identity/bots/range-files.json'), 'utf8')).files
const PUBLISHED = FILES.filter((f) => f.snapshot).map((f) => [f.operator, f.url, f.products])

const fileName = (url) => {
  try {
    return new URL(url).pathname.split('/').pop() ?? ''
  } catch {
    return ''
  }
}
const perProduct = (operator) =>
  FILES.some((f) => f.operator.toLowerCase() === operator.toLowerCase() && f.products !== undefined)

/**
 * The products an entry vouches for, as the proxy reads it (src/identity/bots/ranges.ts): the ones given,
 * else those of the operator's published file of that name; `undefined` for every product of an operator
 * that publishes one list. Throws for a file of an operator that publishes one per product otherwise.
 */
function productsOf(operator, url, given) {
  if (given !== undefined) return given
  const known = FILES.find(
    (f) => f.operator.toLowerCase() === operator.toLowerCase() && fileName(f.url) === fileName(url),
  )
  if (known) return known.products
  if (perProduct(operator))
    throw new Error(
      `${operator} publishes one range file per product: name this one's (--url ${operator}:PRODUCT=URL)`,
    )
  return undefined
}

const args = process.argv.slice(2)
let out = join(root, 'src/identity/bots/ranges-snapshot.json')
const overrides = []
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--out') out = args[++i]
  else if (args[i] === '--url') {
    const spec = String(args[++i])
    const eq = spec.indexOf('=')
    const [operator, list] = spec.slice(0, eq).split(':')
    overrides.push([
      operator,
      spec.slice(eq + 1),
      list === undefined ? undefined : list.split(',').map((p) => p.trim().toLowerCase()),
    ])
  } else {
    console.error(`unknown argument ${args[i]}`)
    process.exit(2)
  }
}
const sources = overrides.length > 0 ? overrides : PUBLISHED

function validCidr(p) {
  if (typeof p !== 'string') return false
  const [ip, bits, extra] = p.split('/')
  const v = isIP(ip ?? '')
  return (
    extra === undefined && v !== 0 && /^\d{1,3}$/.test(bits ?? '') && Number(bits) <= (v === 4 ? 32 : 128)
  )
}

const previous = existsSync(out) ? JSON.parse(readFileSync(out, 'utf8')) : { sources: [] }
const entries = []
let fetched = 0
for (const [operator, url, given] of sources) {
  try {
    const products = productsOf(operator, url, given)
    const res = await fetch(url, {
      headers: { accept: 'application/json' },
      signal: AbortSignal.timeout(15_000),
    })
    if (!res.ok) throw new Error(`HTTP ${res.status}`)
    const doc = await res.json()
    const prefixes = (Array.isArray(doc.prefixes) ? doc.prefixes : [])
      .flatMap((p) => [p?.ipv4Prefix, p?.ipv6Prefix])
      .filter(validCidr)
    if (prefixes.length === 0) throw new Error('no usable prefixes')
    const creationTime = String(doc.creationTime ?? '')
    entries.push(
      products === undefined
        ? { operator, url, creationTime, prefixes }
        : { operator, url, products, creationTime, prefixes },
    )
    fetched++
    console.log(`${operator} ${url}: ${prefixes.length} prefixes`)
  } catch (err) {
    const old = upgraded(previous.sources.find((s) => s.url === url))
    if (old) entries.push(old)
    console.error(`${operator} ${url}: ${err.message}${old ? ' (kept the previous entry)' : ''}`)
  }
}
/**
 * A previous entry as this script writes it now: one made before files were per product gets its file's
 * products; one nothing says that of is left out (the proxy would refuse the snapshot at start).
 */
function upgraded(old) {
  if (!old || old.products !== undefined) return old
  try {
    const products = productsOf(old.operator, old.url, undefined)
    if (products === undefined) return old
    const { prefixes, ...rest } = old
    return { ...rest, products, prefixes }
  } catch (err) {
    console.error(`${old.operator} ${old.url}: previous entry left out: ${err.message}`)
    return undefined
  }
}

if (fetched === 0) {
  console.error('no range file could be fetched; snapshot left unchanged')
  process.exit(1)
}
const snapshot = {
  comment: previous.comment ?? 'Published crawler IP ranges, one entry per range file.',
  asOf: new Date().toISOString().slice(0, 10),
  sources: entries,
}
const body = `${JSON.stringify(snapshot, null, 0).replace('"sources":[', '"sources":[\n').replaceAll('},{"operator"', '},\n{"operator"')}\n`
writeFileSync(out, body)
