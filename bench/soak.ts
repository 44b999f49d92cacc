// npm run soak [-- --minutes 30 --rate 300 --row 60]: mixed identities and faults through nhi-proxy,
// RSS and event-loop delay over time. Writes bench/results/soak.{md,json}.
import { mkdir, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { Command, InvalidArgumentError } from 'commander'
import { runSoak, soakMarkdown } from './lib/soak.ts'

const positive = (v: string) => {
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number')
  return n
}
const o = new Command()
  .name('soak')
  .option('--minutes <n>', 'how long', positive, 30)
  .option('--rate <n>', 'requests per second offered', positive, 300)
  .option('--row <s>', 'seconds per table row (default: minutes × 5)', positive)
  .option('--no-write', 'print only')
  .parse()
  .opts<{ minutes: number; rate: number; row?: number; write: boolean }>()

const seconds = Math.round(o.minutes * 60)
const r = await runSoak({
  seconds,
  rate: o.rate,
  rowSeconds: o.row ?? Math.max(5, Math.round(seconds / 12)),
  log: (s) => process.stderr.write(`${s}\n`),
})
const md = soakMarkdown(r)
process.stdout.write(md)
if (o.write) {
  const dir = fileURLToPath(new URL('./results/', import.meta.url))
  await mkdir(dir, { recursive: true })
  await writeFile(`${dir}soak.md`, md)
  await writeFile(`${dir}soak.json`, `${JSON.stringify(r, null, 2)}\n`)
}
