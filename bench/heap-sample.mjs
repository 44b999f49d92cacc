// `--import`ed into a proxy by the allocation-sites bench: SIGUSR2 starts V8's sampling heap profiler,
// the next SIGUSR2 stops it and writes the profile (JSON, as the inspector returns it) to
// NHI_HEAP_SAMPLE_FILE (`<file>.started` once sampling runs). Objects already collected stay in the profile, so it counts what was allocated, not
// what is still alive (the default, and what `--heap-prof` writes, is only the survivors).
import { writeFileSync } from 'node:fs'
import { Session } from 'node:inspector'

const file = process.env.NHI_HEAP_SAMPLE_FILE
const interval = Number(process.env.NHI_HEAP_SAMPLE_INTERVAL) || 4096
const session = new Session()
session.connect()
const post = (method, params) =>
  new Promise((resolve, reject) =>
    session.post(method, params, (err, result) => (err ? reject(err) : resolve(result))),
  )

let sampling = false
process.on('SIGUSR2', () => {
  if (!sampling) {
    sampling = true
    // the marker file tells the harness that sampling has begun, so no request before it is counted
    void post('HeapProfiler.enable')
      .then(() =>
        post('HeapProfiler.startSampling', {
          samplingInterval: interval,
          includeObjectsCollectedByMajorGC: true,
          includeObjectsCollectedByMinorGC: true,
        }),
      )
      .then(() => {
        if (file) writeFileSync(`${file}.started`, '')
      })
    return
  }
  sampling = false
  void post('HeapProfiler.stopSampling').then((r) => {
    if (file) writeFileSync(file, JSON.stringify(r.profile))
  })
})
