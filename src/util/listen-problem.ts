/** getaddrinfo's codes for a name that does not resolve (or not now): said in words, with the name */
const HOST_NOT_FOUND_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME'])

/** whether an error's code is a host name that did not resolve */
export function isHostNotFound(code: string | undefined): boolean {
  return code !== undefined && HOST_NOT_FOUND_CODES.has(code)
}

/** the words every command uses for a name that does not resolve, with what was given after them */
export function hostNotFound(detail: string): string {
  return `host name not found (${detail})`
}

/**
 * Why a listener could not bind, in the words every command uses for it (`run`, `workers`, `demo` matches on
 * them, `fleet --serve`), rather than an errno.
 */
export function listenProblem(e: unknown): string {
  const { code, message } = e as NodeJS.ErrnoException
  if (code === 'EADDRINUSE') return 'address in use'
  if (code === 'EACCES') return 'permission denied'
  // an IP address no interface of this host has (a pod IP from another pod, a typo)
  if (code === 'EADDRNOTAVAIL') return 'address not available on this host (no interface has it)'
  // a host name that does not resolve: getaddrinfo's message names neither the port nor the setting
  if (isHostNotFound(code)) return hostNotFound('use an IP address, or a name this host resolves')
  return message
}

/**
 * The address a listen failed on, for its message: Node's bind errors carry it, a host name that does not
 * resolve (getaddrinfo) does not.
 */
export function withListenAddress(err: unknown, host: string, port: number): unknown {
  const e = err as { address?: string; port?: number }
  if (typeof err === 'object' && err !== null && e.address === undefined) {
    e.address = host
    e.port = port
  }
  return err
}
