// Route label templates (docs/reference.md "Metrics" `route` label): "/api/v1/orders/:id" → the template, anything else →
// "other". The label set is bounded by the config. A parameter segment (`:id` or `{id}`, the one syntax of
// pattern.ts) and `*` match one segment, a trailing `**` matches the rest. Templates are bucketed by
// segment count so a lookup tests only plausible candidates.
import { segmentParam } from './pattern.ts'

export const OTHER_ROUTE = 'other'
const MAX_PATH_SEGMENTS_SCANNED = 64

interface CompiledRoute {
  template: string
  order: number
  re: RegExp
  segments: number
  /** ends in `**`: matches this many segments or more (minus the globstar) */
  open: boolean
}

export interface RouteMatcher {
  /** configured template that matches `path`, first in config order, or "other" */
  match(path: string): string
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')
}

/** Returns an error message, or undefined when the template is valid. */
export function routeError(template: string): string | undefined {
  if (!template.startsWith('/')) return `route "${template}" must start with "/"`
  const segs = template.split('/').slice(1)
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!
    if (s === '**' && i !== segs.length - 1)
      return `route "${template}": "**" is only allowed as the last segment`
    if ((s.startsWith(':') || s.includes('{') || s.includes('}')) && segmentParam(s) === undefined) {
      return `route "${template}": invalid parameter "${s}" (a whole segment :name or {name})`
    }
    if (s !== '*' && s !== '**' && s.includes('*')) return `route "${template}": "*" must be a whole segment`
  }
  return undefined
}

/** Number of segments in a path without allocating ("/a/b" → 2, "/" → 0, trailing slash ignored). */
function countSegments(path: string): number {
  let n = 0
  const end = path.length > 1 && path.endsWith('/') ? path.length - 1 : path.length
  for (let i = 0; i < end; i++) if (path.charCodeAt(i) === 47) n++
  return end <= 1 ? 0 : n
}

function compileRoute(template: string, order: number): CompiledRoute {
  const segs = template === '/' ? [] : template.replace(/\/$/, '').split('/').slice(1)
  const open = segs[segs.length - 1] === '**'
  let re = '^'
  for (const s of open ? segs.slice(0, -1) : segs) {
    re += '/'
    re += s === '*' || segmentParam(s) !== undefined ? '[^/]+' : escapeRegExp(s)
  }
  re += open ? '(?:/.*)?/?$' : '/?$'
  return { template, order, re: new RegExp(re), segments: open ? segs.length - 1 : segs.length, open }
}

export function compileRoutes(templates: readonly string[]): RouteMatcher {
  const routes = templates.filter((t) => routeError(t) === undefined).map(compileRoute)
  if (routes.length === 0) return { match: () => OTHER_ROUTE }
  const maxFixed = Math.min(MAX_PATH_SEGMENTS_SCANNED, Math.max(0, ...routes.map((r) => r.segments)))
  // buckets[n] = candidates for a path with n segments, in config order; the last bucket serves longer paths.
  const buckets: CompiledRoute[][] = []
  for (let n = 0; n <= maxFixed + 1; n++) {
    buckets.push(
      routes.filter((r) => (r.open ? n >= r.segments : n === r.segments)).sort((a, b) => a.order - b.order),
    )
  }
  const overflow = buckets[maxFixed + 1]!
  return {
    match(path) {
      const n = countSegments(path)
      const candidates = n <= maxFixed ? buckets[n]! : overflow
      for (const r of candidates) if (r.re.test(path)) return r.template
      return OTHER_ROUTE
    },
  }
}
