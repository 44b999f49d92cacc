// The admin token Secret must be readable by the proxy's uid in every pod the chart renders it into.
// The kubelet writes Secret files as root:root, group fsGroup only when the pod sets one. Sidecar mode keeps
// the app's pod securityContext (the chart renders none), so a 0440 file is unreadable by uid 65532: the
// proxy logs admin_token_unreadable (EACCES) and the operator endpoints stay loopback-only.
import { join } from 'node:path'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { CHART_DIR, localTool, run } from '../helpers/tools.ts'

const helm = localTool('helm')

async function podOf(args: string[]) {
  const r = await run(helm, ['template', 'shop', CHART_DIR, '--namespace', 'shop', ...args])
  if (r.code !== 0) throw new Error(r.stderr)
  // YAML 1.1 as Kubernetes reads it: `0440` is octal
  const deploy = parseAllDocuments(r.stdout, { version: '1.1' })
    .map((d) => d.toJS())
    .find((o) => o?.kind === 'Deployment')
  return deploy.spec.template.spec
}

for (const [mode, args] of [
  ['deployment', []],
  ['sidecar', ['-f', join(CHART_DIR, 'examples', 'sidecar-values.yaml')]],
] as const) {
  t.test(`${mode} mode: the proxy (uid 65532) can read the admin token file`, async (t) => {
    const pod = await podOf([...args, '--set', 'adminToken.existingSecret=shop-admin-token'])
    const volume = pod.volumes.find(
      (v: { secret?: { secretName: string } }) => v.secret?.secretName === 'shop-admin-token',
    )
    const mode = volume.secret.defaultMode ?? 0o644
    const fsGroup = pod.securityContext?.fsGroup
    const readable = (mode & 0o004) !== 0 || (fsGroup === 65532 && (mode & 0o040) !== 0)
    t.ok(readable, `mode ${mode.toString(8)}, pod fsGroup ${fsGroup ?? 'none'}: readable by 65532:65532`)
  })
}
