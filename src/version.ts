import { readFileSync } from 'node:fs'

/** set by the bundler (scripts/bundle.mjs); undefined when running the compiled or TypeScript sources */
declare const __NHI_VERSION__: string | undefined

// Read once at startup (src/ and dist/ both sit one level below the package root).
function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version?: string
    }
    return pkg.version ?? '0.0.0'
  } catch {
    return '0.0.0'
  }
}

export const VERSION = typeof __NHI_VERSION__ === 'string' ? __NHI_VERSION__ : readVersion()
