// Why a file could not be read, in words rather than an errno: for config files, rule test files and TLS files.

export function readProblem(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code
  if (code === 'ENOENT') return 'file not found'
  if (code === 'EISDIR') return 'is a directory, not a file'
  if (code === 'EACCES') return 'permission denied'
  return `cannot read file: ${(e as Error).message}`
}
