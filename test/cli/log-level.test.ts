// A mistyped NHI_LOG_LEVEL is bad input: one line naming the variable and exit 1, not pino's internal
// "default level … must be included in custom levels" and exit 2.
import t from 'tap'
import { runCli } from '../helpers/sidecar.ts'

t.test('NHI_LOG_LEVEL=bogus: one line naming the variable, exit 1', async (t) => {
  const r = await runCli(['run', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], {
    env: { NHI_LOG_LEVEL: 'bogus', NHI_PROXY_CONFIG: undefined },
    timeoutMs: 8000,
  })
  t.equal(r.code, 1)
  t.match(r.stderr, /NHI_LOG_LEVEL/)
})
