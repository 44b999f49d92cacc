// printable() is what keeps clients' names from driving the operator's terminal in inventory, fleet and
// explain: every bidi control (Unicode's Bidi_Control property) is shown as its escape, not only some.
import t from 'tap'
import { printable } from '../../src/cli/prometheus-api.ts'

t.test('every bidi control character is shown as its escape', async (t) => {
  const bidiControls = [
    0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069,
  ]
  for (const code of bidiControls) {
    const c = String.fromCharCode(code)
    t.equal(printable(`a${c}b`), `a\\u${code.toString(16)}b`, `U+${code.toString(16).padStart(4, '0')}`)
  }
})

// a name a client chose can carry characters that show as nothing: `admin` followed by a zero-width space
// looks like `admin` in a table, and tag characters can hide a whole second text
t.test('characters that show as nothing are shown as their escape', async (t) => {
  const invisible: [number, string][] = [
    [0x00ad, '\\xad'],
    [0x200b, '\\u200b'],
    [0x200c, '\\u200c'],
    [0x200d, '\\u200d'],
    [0x2060, '\\u2060'],
    [0xfeff, '\\ufeff'],
    [0xfe0f, '\\ufe0f'],
    [0xe0041, '\\u{e0041}'],
  ]
  for (const [code, shown] of invisible) {
    t.equal(printable(`admin${String.fromCodePoint(code)}`), `admin${shown}`, `U+${code.toString(16)}`)
  }
  t.equal(printable('café ünïcödé 名前 ✓'), 'café ünïcödé 名前 ✓', 'visible text as it is')
})
