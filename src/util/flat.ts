/**
 * Concatenation builds a tree of string pieces. A string kept for a long time and copied into output often
 * (a cached audit fragment, a rendered series) is worth flattening once: reading one character makes V8
 * flatten it in place, so later copies are one piece and the tree's nodes are freed.
 */
export function flattened(s: string): string {
  s.charCodeAt(0)
  return s
}
