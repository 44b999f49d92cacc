#!/usr/bin/env node
// Regenerates src/identity/bots/ranges-snapshot.json from the crawler IP range files the operators publish.
// Refresh: run `node scripts/refresh-bot-ranges.mjs` where those URLs are reachable, review, commit.
// A file that cannot be fetched keeps its previous snapshot entry (and is reported); the run fails only when
// nothing could be fetched. Options: --out PATH (another output file), --url OPERATOR=URL (repeatable:
// fetch these instead of the published list, e.g. a mirror).
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const PUBLISHED = [
  ['Google', 'https://developers.google.com/static/search/apis/ipranges/googlebot.json'],
  ['Bing', 'https://www.bing.com/toolbox/bingbot.json'],
  ['OpenAI', 'https://openai.com/gptbot.json'],
  ['OpenAI', 'https://openai.com/searchbot.json'],
  ['OpenAI', 'https://openai.com/chatgpt-user.json'],
  ['Apple', 'https://search.developer.apple.com/applebot.json'],
  ['Perplexity', 'https://www.perplexity.ai/perplexitybot.json'],
  ['Perplexity', 'https://www.perplexity.ai/perplexity-user.json'],
]

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const args = process.argv.slice(2)
let out = join(root, 'src/identity/bots/ranges-snapshot.json')
const overrides = []
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--out') out = args[++i]
  else if (args[i] === '--url') {
    const [operator, ...rest] = String(args[++i]).split('=')
    overrides.push([operator, rest.join('=')])
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
for (const [operator, url] of sources) {
  try {
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
    entries.push({ operator, url, creationTime: String(doc.creationTime ?? ''), prefixes })
    fetched++
    console.log(`${operator} ${url}: ${prefixes.length} prefixes`)
  } catch (err) {
    const old = previous.sources.find((s) => s.url === url)
    if (old) entries.push(old)
    console.error(`${operator} ${url}: ${err.message}${old ? ' (kept the previous entry)' : ''}`)
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
