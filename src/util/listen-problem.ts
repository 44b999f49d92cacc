/**
 * Why a listener could not bind, in the words every command uses for it (`run`, `workers`, `demo` matches on
 * them, `fleet --serve`), rather than an errno.
 */
export function listenProblem(e: unknown): string {
  const { code, message } = e as NodeJS.ErrnoException
  if (code === 'EADDRINUSE') return 'address in use'
  if (code === 'EACCES') return 'permission denied'
  return message
}
