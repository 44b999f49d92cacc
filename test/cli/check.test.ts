import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { golden } from '../helpers/golden.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

async function check(files: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; text: string }> {
  const r = await runCli(['check', ...files], { env: { NHI_PROXY_CONFIG: undefined, ...env } })
  return { code: r.code, text: r.stdout }
}

t.test('schema errors: FILE:LINE:COL message (hint), exit 1', async (t) => {
  const r = await check(['test/golden/bad-config.yaml'])
  t.equal(r.code, 1)
  t.equal(r.text, golden('check-bad-config.txt', r.text))
  t.match(
    r.text,
    /^test\/golden\/bad-config\.yaml:3:1 unknown key "upstreem" \(hint: did you mean "upstream"\?\)$/m,
  )
})

t.test('semantic errors and warnings, exit 1', async (t) => {
  const r = await check(['test/golden/semantic-config.yaml'])
  t.equal(r.code, 1)
  t.equal(r.text, golden('check-semantic-config.txt', r.text))
})

t.test('every shipped config is valid', async (t) => {
  const files = [
    'config/nhi-proxy.yaml',
    'config/examples/kubernetes-sidecar.yaml',
    'config/examples/github-actions-jobs.yaml',
    'config/examples/public-api-with-bots.yaml',
    'config/examples/mesh-xfcc.yaml',
    'config/examples/policy-enforce.yaml',
  ]
  const r = await check(files)
  t.equal(r.code, 0, r.text)
  t.notMatch(r.text, /warning/)
  t.equal(r.text.trim().split('\n').length, files.length)
})

t.test('without files: $NHI_PROXY_CONFIG, else config/nhi-proxy.yaml', async (t) => {
  const [env, def, missing] = await Promise.all([
    check([], { NHI_PROXY_CONFIG: 'test/golden/bad-config.yaml' }),
    check([]),
    check(['does/not/exist.yaml']),
  ])
  t.equal(env.code, 1)
  t.match(env.text, /^test\/golden\/bad-config\.yaml:/)
  t.equal(def.code, 0)
  t.match(def.text, /^config\/nhi-proxy\.yaml: ok/)
  t.equal(missing.code, 1)
  t.match(missing.text, /does\/not\/exist\.yaml:1:1 file not found/)
})

t.test(
  'missing TLS, admin token and directory CA files are reported where the config names them',
  async (t) => {
    const dir = scratchDirSync('check-files')
    const path = join(dir, 'files.yaml')
    writeFileSync(
      path,
      [
        'upstream: https://127.0.0.1:8443',
        'upstreamTls:',
        '  ca: ./typo-upstream-ca.crt',
        '  cert: ./typo-client.crt',
        '  key: ./typo-client.key',
        'adminAccess:',
        '  tokenFile: ./typo-admin-token',
        'signedAgents:',
        '  directories:',
        '    - url: https://agent.example/.well-known/http-message-signatures-directory',
        '      caFile: ./typo-agent-ca.crt',
        '',
      ].join('\n'),
    )
    const r = await runCli(['check', 'files.yaml'], { cwd: dir, env: { NHI_PROXY_CONFIG: undefined } })
    t.equal(r.code, 1, r.stdout)
    t.match(r.stdout, 'files.yaml:3:7 ca "./typo-upstream-ca.crt": file not found')
    t.match(r.stdout, 'files.yaml:4:9 cert "./typo-client.crt": file not found')
    t.match(r.stdout, 'files.yaml:5:8 key "./typo-client.key": file not found')
    t.match(r.stdout, 'files.yaml:7:14 tokenFile "./typo-admin-token": file not found')
    t.match(r.stdout, 'files.yaml:11:15 caFile "./typo-agent-ca.crt": file not found')
    t.match(r.stdout, /^files\.yaml: 5 errors$/m)
  },
)
