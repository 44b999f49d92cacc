// The Dockerfile as a list of instructions, for the tests that check the image without a container engine.

export interface Instruction {
  keyword: string
  args: string
}

/** Dockerfile instructions with line continuations joined, comments dropped and whitespace collapsed. */
export function instructions(text: string): Instruction[] {
  const joined = text
    .split('\n')
    .filter((l) => !l.trimStart().startsWith('#'))
    .join('\n')
    .replace(/\\\n/g, ' ')
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const [keyword = '', ...rest] = l.split(/\s+/)
      return { keyword: keyword.toUpperCase(), args: rest.join(' ') }
    })
}

/** Instructions of the last stage (what the image runs). */
export function finalStage(all: Instruction[]): Instruction[] {
  const lastFrom = all.map((i) => i.keyword).lastIndexOf('FROM')
  return all.slice(lastFrom)
}

/** Instructions of the stage named `name` (FROM … AS name). */
export function stage(all: Instruction[], name: string): Instruction[] {
  const start = all.findIndex(
    (i) => i.keyword === 'FROM' && new RegExp(`\\bAS\\s+${name}$`, 'i').test(i.args),
  )
  if (start < 0) return []
  const next = all.findIndex((i, n) => n > start && i.keyword === 'FROM')
  return all.slice(start, next < 0 ? undefined : next)
}
