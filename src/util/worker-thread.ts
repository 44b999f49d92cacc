// Starts a worker thread from its entry file, the same way from the sources and from the bundle.
// The bundle keeps each worker as an entry of its own beside nhi-proxy.mjs (this code may sit in a chunk one
// directory down). From the sources (tests, `npm run dev`) the worker is the TypeScript file itself; Node 20
// does not apply the parent's module hooks to a worker's entry, so the worker registers the type-stripping
// hook (scripts/register-ts.mjs) itself before importing it.
import { type ResourceLimits, Worker, type WorkerOptions } from 'node:worker_threads'

declare const __NHI_BUNDLED__: boolean | undefined

/**
 * @param source the worker's TypeScript entry (used when running from the sources)
 * @param bundled the entry's file name in the bundle, e.g. `jwt-verify-worker.mjs`
 * @param how.resourceLimits apply to the bundled worker only: a worker run from the sources needs room for the
 *   module hooks
 */
export function startWorkerThread(
  source: URL,
  bundled: string,
  how: { options?: Omit<WorkerOptions, 'eval' | 'resourceLimits'>; resourceLimits?: ResourceLimits } = {},
): Worker {
  if (typeof __NHI_BUNDLED__ === 'undefined') {
    const hook = new URL('../../scripts/register-ts.mjs', import.meta.url).href
    const code = `import(${JSON.stringify(hook)}).then(() => import(${JSON.stringify(source.href)}))`
    return new Worker(code, { ...how.options, eval: true })
  }
  const here = new URL('.', import.meta.url)
  const file = new URL(here.pathname.endsWith('/chunks/') ? `../${bundled}` : `./${bundled}`, here)
  return new Worker(file, {
    ...how.options,
    ...(how.resourceLimits ? { resourceLimits: how.resourceLimits } : {}),
  })
}
