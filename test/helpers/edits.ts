// One-character edits of a valid value, for the generated tests that compare a parser with its specification
// on near-valid input: the same edits in each such test, which adds the mutations its own grammar needs.

/** the text put in at `at` (insert) or in place of the character there (replace) */
export type TextEdit = { kind: 'insert' | 'replace'; at: number; text: string }
/** the character at `at` taken out (delete), or its letter case turned (flip-case) */
export type CharEdit = { kind: 'delete' | 'flip-case'; at: number }

/** `s` with the edit made; `at` wraps around the string's length */
export function applyEdit(s: string, m: TextEdit | CharEdit): string {
  switch (m.kind) {
    case 'insert': {
      const i = m.at % (s.length + 1)
      return s.slice(0, i) + m.text + s.slice(i)
    }
    case 'replace': {
      const i = m.at % s.length
      return s.slice(0, i) + m.text + s.slice(i + 1)
    }
    case 'delete': {
      const i = m.at % s.length
      return s.slice(0, i) + s.slice(i + 1)
    }
    case 'flip-case': {
      const i = m.at % s.length
      const c = s[i]!
      return s.slice(0, i) + (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()) + s.slice(i + 1)
    }
  }
}
