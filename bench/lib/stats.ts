// The one median of the bench's reports: rounds are few, so the mean of the two middle values for even counts.

/** median of `xs`; `empty` when there is nothing to take it of */
export function median(xs: readonly number[], empty = Number.NaN): number {
  if (xs.length === 0) return empty
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}
