// `nhi-proxy schema`: the config's JSON Schema, for yaml-language-server and editors.
import { configJsonSchema } from '../config/schema.ts'
import type { Out } from './check.ts'

/** Pretty JSON Schema; host-dependent defaults (service = hostname) are left out so the output is stable. */
export function schemaText(): string {
  const schema = { title: 'nhi-proxy config', ...configJsonSchema() }
  const service = (schema as { properties?: Record<string, Record<string, unknown>> }).properties?.['service']
  if (service) {
    delete service['default']
    service['description'] = 'label `service` on every metric (default: $NHI_SERVICE or the hostname)'
  }
  return JSON.stringify(schema, null, 2)
}

export function runSchema(out: Out): number {
  out(schemaText())
  return 0
}
