// The allocation bench reads V8's `--trace-gc-nvp` lines, whose form changes between Node versions: each
// supported form is read here on whatever Node runs the suite, and the Node that runs it prints lines that
// are read (the bench's smoke, smoke-modes.test.ts, takes a minute and more where they are not).
import { execFileSync } from 'node:child_process'
import t from 'tap'
import { parseGcLine } from '../../bench/lib/alloc.ts'

// one collection each, cut short after the fields read (the real lines go on with a hundred more)
const SAMPLES = [
  {
    node: 'Node 20 and 22',
    line: '[31723:0x19521ee0]       19 ms: pause=0.4 mutator=15.5 gc=s reduce_memory=0 time_to_safepoint=0.00 allocated=5044848 promoted=180632 semi_space_copied=118312',
    gc: { isolate: '0x19521ee0', kind: 's', allocated: 5044848 },
  },
  {
    node: 'Node 24',
    line: '[31713:0x35b24000:0]       44 ms: pause=0.6 mutator=36.4 gc=mc reduce_memory=0 interleaved=0 allocated=3619128 promoted=1331592',
    gc: { isolate: '0x35b24000', kind: 'mc', allocated: 3619128 },
  },
  {
    node: 'Node 26',
    line: '[31703:0x377d3000:0]       54 ms: GC: {"pause":0.507,"mutator":47.249,"gc":"s","reduce_memory":false,"reason":"allocation failure","start_object_size":5044808,"allocation_throughput":29819,"new_space_allocation_throughput":6197.57,"allocated":5044808,"promoted":0,"new_space_survived":118304}',
    gc: { isolate: '0x377d3000', kind: 's', allocated: 5044808 },
  },
]

t.test('a collection is read from the GC line of every supported Node version', async (t) => {
  for (const { node, line, gc } of SAMPLES) t.same(parseGcLine(line), gc, node)
})

t.test('lines that report no collection are not read as one', async (t) => {
  for (const line of [
    '[31703:0x377d3000:0]       54 ms: Memory pool: Removed pages: 0, removed large pages: 0',
    ', removed zone reservations: 0',
    '{"level":40,"svc":"nhi-proxy","msg":"gc=s allocated=12"}',
  ])
    t.equal(parseGcLine(line), undefined, line)
})

t.test(`the GC lines of this Node (${process.version}) are read`, async (t) => {
  // a few MB of short-lived objects: several young-generation collections
  const out = execFileSync(
    process.execPath,
    [
      '--trace-gc',
      '--trace-gc-nvp',
      '-e',
      'let a = []; for (let i = 0; i < 300_000; i++) { a.push({ i }); if (a.length > 1000) a = [] }',
    ],
    { encoding: 'utf8', timeout: 30_000 },
  )
  const collections = out.split('\n').flatMap((line) => parseGcLine(line) ?? [])
  t.ok(collections.length > 0, `${collections.length} collections read`)
  t.ok(
    collections.every((gc) => gc.kind.length > 0 && Number.isSafeInteger(gc.allocated)),
    'each with its kind and the bytes allocated since the previous one',
  )
  // the loop allocates ≈ 10 MB
  const allocated = collections.reduce((sum, gc) => sum + gc.allocated, 0)
  t.ok(allocated > 1_000_000, `${allocated} bytes allocated in all`)
})
