/** an object that is not an array or null: what a parsed JSON or YAML mapping is */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
