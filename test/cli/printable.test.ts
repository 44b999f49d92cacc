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
