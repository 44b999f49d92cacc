// A child's output read as text: a character whose UTF-8 bytes arrive in two reads must stay one character.
// A test that decoded each chunk by itself (`chunk.toString()`) turned such a character into two U+FFFD; the
// generated identity-names test saw it once in CI, as an audit line whose long astral api key name differed
// from the live view's, only when the pipe happened to cut the sidecar's stdout inside that character.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir, readFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import t from 'tap'

const ROOT = join(import.meta.dirname, '..', '..')

/** a child that writes U+1F600's four bytes in two writes, the second only once the parent has read the first */
async function splitCharacter(read: 'chunk' | 'decoded'): Promise<string> {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const b = Buffer.from('a\\u{1F600}b');
       process.stdout.write(b.subarray(0, 3));
       process.stdin.once('data', () => { process.stdout.write(b.subarray(3)); process.exit(0) })`,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  )
  let text = ''
  if (read === 'decoded') child.stdout.setEncoding('utf8')
  child.stdout.on('data', (c: Buffer | string) => {
    const first = text === ''
    text += typeof c === 'string' ? c : c.toString()
    if (first) child.stdin.write('next\n')
  })
  await once(child, 'close')
  return text
}

t.test('a character split across two reads of a pipe', async (t) => {
  t.equal(await splitCharacter('decoded'), 'a\u{1F600}b', 'read with setEncoding: one character, as written')
  t.not(await splitCharacter('chunk'), 'a\u{1F600}b', 'each chunk decoded by itself: the character is lost')
})

async function* sourceFiles(dir: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) yield* sourceFiles(path)
    else if (/\.(ts|mts|mjs)$/.test(entry.name)) yield path
  }
}

t.test('no stream is read by decoding each chunk by itself', async (t) => {
  // `.on('data', (c: Buffer) => { … c.toString() …`: the handler's parameter decoded on its own
  const chunkDecoded =
    /\.on\(\s*'data',\s*\((\w+)(?::\s*Buffer)?\)\s*=>\s*\{?[^}]*?\b\1\.toString\(\s*(?:'utf-?8')?\s*\)/g
  const found: string[] = []
  for (const dir of ['src', 'test', 'bench', 'scripts']) {
    for await (const file of sourceFiles(join(ROOT, dir))) {
      // this file reads a chunk by itself on purpose, above
      if (file === import.meta.filename) continue
      const text = await readFile(file, 'utf8')
      for (const m of text.matchAll(chunkDecoded)) {
        const line = text.slice(0, m.index).split('\n').length
        found.push(`${relative(ROOT, file)}:${line}`)
      }
    }
  }
  t.same(found, [], 'each reads with setEncoding, or collects the chunks and decodes them once')
})
