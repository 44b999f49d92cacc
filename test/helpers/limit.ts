// Bounded concurrency for tests: many short child processes (CLI runs, helm, kubectl) or generated requests
// side by side finish sooner than one after another, but not so many at once that a loaded machine thrashes.

/** A gate letting at most `max` of the functions passed to it run at once, the others queued in order. */
export function limiter(max: number): <R>(fn: () => Promise<R>) => Promise<R> {
  let active = 0
  const queue: (() => void)[] = []
  return async <R>(fn: () => Promise<R>): Promise<R> => {
    if (active >= max) await new Promise<void>((resolve) => queue.push(resolve))
    else active++
    try {
      return await fn()
    } finally {
      const next = queue.shift()
      if (next) next()
      else active--
    }
  }
}

/** `fn` over `items`, at most `max` at once; the results in the order of `items`. */
export function mapLimit<T, R>(
  items: readonly T[],
  max: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const gate = limiter(max)
  return Promise.all(items.map((item, i) => gate(() => fn(item, i))))
}

/** `work` over 0..n-1, at most `width` at once, each worker taking the next index when it is done */
export async function inParallel(
  n: number,
  width: number,
  work: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) await work(next++)
    }),
  )
}
