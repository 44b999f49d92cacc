// A response body read whole, but never past a bound: a server that answers without end (or an enormous
// answer) must not take the process's memory with it. One reader for node streams and web streams alike.

/** The body's bytes, or undefined as soon as it passes `max` bytes (leaving the loop cancels the rest). */
export async function readBounded(body: AsyncIterable<Uint8Array>, max: number): Promise<Buffer | undefined> {
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of body) {
    size += chunk.byteLength
    if (size > max) return undefined
    chunks.push(chunk)
  }
  return Buffer.concat(chunks, size)
}
