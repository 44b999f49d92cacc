// Every command's --help ends with a runnable example, and descriptions wrap as whole paragraphs.
import t from 'tap'
import { runCli } from '../helpers/sidecar.ts'

const COMMANDS = ['run', 'check', 'explain', 'test', 'demo', 'demo-idp', 'schema', 'inventory', 'fleet']

t.test('every subcommand --help shows an example of itself', async (t) => {
  const helps = await Promise.all(COMMANDS.map((c) => runCli([c, '--help'])))
  COMMANDS.forEach((c, i) => {
    const h = helps[i]
    t.equal(h?.code, 0, `${c} --help exits 0`)
    t.match(h?.stdout, new RegExp(`\\nExamples?:\\n  nhi-proxy ${c}( |\\n)`), `${c}: an example`)
  })
})

t.test('descriptions wrap at the terminal width, not mid-sentence', async (t) => {
  const [main, idp] = await Promise.all([runCli(['--help']), runCli(['demo-idp', '--help'])])
  t.match(main.stdout, /a person or a\nnon-human identity \(service, job, bot, AI agent\) and exports/)
  t.notMatch(idp.stdout, /\nwith your own config/, 'no hard line break inside the demo-idp description')
})

t.test('run given the config file as an argument: the -c spelling, exit 1, nothing started', async (t) => {
  const r = await runCli(
    ['run', 'config/nhi-proxy.yaml', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
    {
      timeoutMs: 8000,
    },
  )
  t.equal(r.code, 1)
  t.match(r.stderr, /run takes no arguments; for a config file: nhi-proxy run -c config\/nhi-proxy\.yaml/)
  t.notMatch(r.stderr, /"event":"started"/)
})

// `check` reports a missing file for every setting that names one; its help listed only some of them
t.test('check --help names every file setting whose file it checks', async (t) => {
  const h = await runCli(['check', '--help'])
  const text = h.stdout.replace(/\s+/g, ' ')
  for (const setting of [
    'jwksFile',
    'secretFile',
    'caFile',
    'bearerTokenFile',
    'listen.https cert/key/clientCA',
    'upstreamTls ca/cert/key',
    'apiKeys.fingerprintKeyFile',
    'adminAccess.tokenFile',
  ])
    t.ok(text.includes(setting), setting)
})
