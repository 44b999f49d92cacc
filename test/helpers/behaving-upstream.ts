// An HTTP/1.1 upstream that does what each request's `x-behave` field says once its body is in: answer with
// `x-status` (at once, or after `x-delay` ms), never answer, send a head and part of a longer body, or break
// off in one of several ways. The accounting and OTLP differential tests drive it with generated exchanges.
import { createServer, type IncomingMessage } from 'node:http'
import type { Test } from 'tap'
import { eventually } from './eventually.ts'
import { listenUntilTeardown } from './net.ts'

export type UpstreamBehaviour =
  | 'normal'
  | 'slow'
  | 'hang'
  | 'hold'
  | 'stream'
  | 'reset-before-head'
  | 'close-without-answer'
  | 'reset-mid-body'
  | 'short-length'
  | 'cut-chunked'

/** the part of a longer answer a `stream` or cutting upstream sends */
export const FIRST_PART = Buffer.alloc(1024, 0x61)
/** the length such an answer announces */
export const ANNOUNCED = 4096
/** the body of a whole answer to `path` */
export const answerBody = (path: string) => `answer ${path}`

export interface BehavingUpstream {
  url: string
  /** request body bytes read, by path */
  bodyBytes: Map<string, number>
  /** paths whose request body arrived whole */
  whole: Set<string>
}

/**
 * `headSeen`: the paths whose answer head a client has read (a reset after it is one mid-body, never one that
 * overtakes the head). `onRequest` sees each request as it arrives.
 */
export async function behavingUpstream(
  t: Test,
  headSeen: ReadonlySet<string>,
  onRequest?: (req: IncomingMessage) => void,
): Promise<BehavingUpstream> {
  const bodyBytes = new Map<string, number>()
  const whole = new Set<string>()
  const server = createServer((req, res) => {
    const path = req.url ?? ''
    const socket = req.socket
    onRequest?.(req)
    req.on('data', (c: Buffer) => bodyBytes.set(path, (bodyBytes.get(path) ?? 0) + c.length))
    req.on('end', () => {
      whole.add(path)
      const answer = () => {
        const body = answerBody(path)
        res.writeHead(Number(req.headers['x-status']), { 'content-length': Buffer.byteLength(body) })
        res.end(body)
      }
      switch (req.headers['x-behave'] as UpstreamBehaviour) {
        case 'normal':
          answer()
          return
        case 'slow': {
          const timer = setTimeout(answer, Number(req.headers['x-delay']))
          res.on('close', () => clearTimeout(timer))
          return
        }
        case 'hang':
        case 'hold':
          return
        case 'stream':
          res.writeHead(200, { 'content-length': ANNOUNCED })
          res.write(FIRST_PART)
          return
        case 'reset-before-head':
          socket.resetAndDestroy()
          return
        case 'close-without-answer':
          socket.destroy()
          return
        case 'reset-mid-body': {
          res.writeHead(200, { 'content-length': ANNOUNCED })
          res.write(FIRST_PART)
          const reset = () => socket.resetAndDestroy()
          eventually(() => headSeen.has(path) || socket.destroyed, {
            intervalMs: 5,
            what: `the client to have the head of ${path}`,
          }).then(reset, reset)
          return
        }
        case 'short-length':
          socket.end(
            Buffer.concat([
              Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${ANNOUNCED}\r\n\r\n`),
              FIRST_PART,
            ]),
          )
          return
        case 'cut-chunked':
          socket.end(
            Buffer.concat([
              Buffer.from(
                `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${FIRST_PART.length.toString(16)}\r\n`,
              ),
              FIRST_PART,
              Buffer.from('\r\n'),
            ]),
          )
          return
      }
    })
  })
  const port = await listenUntilTeardown(t, server)
  return { url: `http://127.0.0.1:${port}`, bodyBytes, whole }
}
