// Ports for child processes that are told their port up front (the bench's servers, the tests' Prometheus,
// nginx and sidecars on a known port). Test files run as separate processes, several at a time, and each
// picks ports at random: a port is reserved machine-wide by a file before it is handed out, or two
// processes could hand the same port to their children before either binds it.
import { once } from 'node:events'
import {
  chmodSync,
  closeSync,
  constants,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmdirSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'

/**
 * Ports are taken from below the range the kernel hands out for port 0 and for outgoing connections
 * (ip_local_port_range, 32768-60999 by default): a listener on port 0 started meanwhile — a sidecar's, an
 * upstream's, another test file's — can never be given a port handed out here before its owner binds it.
 */
const ASSIGNED_LOW = 20_000
const ephemeralLow = (() => {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    return Number.isInteger(low) ? low : 0
  } catch {
    return 0
  }
})()
/** handed out by this process: never twice, though a stopped child's port is free again */
const handedOut = new Set<number>()

/**
 * A reservation older than this is taken over even when its pid is alive: the OS may have given the pid of a
 * process that died without releasing its ports to another process, which would otherwise hold them forever.
 * Generous: a child binds its port within seconds of being told it, and from then on the bind is what keeps
 * the port from others.
 */
export const RESERVATION_TTL_MS = 10 * 60_000

/**
 * The directory every process on this machine reserves ports in. Shared memory where there is one (Linux):
 * a file is created there in microseconds, where a disk's journal under load takes milliseconds, and it is
 * the same directory for every process whatever TMPDIR each was given. Else the temp directory.
 */
export const RESERVATION_DIR = (() => {
  try {
    if (statSync('/dev/shm').isDirectory()) return '/dev/shm/nhi-proxy-ports'
  } catch {}
  return join(tmpdir(), 'nhi-proxy-ports')
})()

/** reservation files this process made (path → content), released when it exits */
const mine = new Map<string, string>()
/** false once the shared directory turned out unusable: this process's own record is then all there is */
let sharedUsable = true
let exitHooked = false

const errCode = (err: unknown) => (err as NodeJS.ErrnoException).code

function ensureDir(dir: string): void {
  try {
    mkdirSync(dir)
  } catch (err) {
    if (errCode(err) === 'EEXIST') return
    if (errCode(err) !== 'ENOENT') throw err
    // a TMPDIR that does not exist yet
    mkdirSync(dirname(dir), { recursive: true })
    try {
      mkdirSync(dir)
    } catch (again) {
      if (errCode(again) === 'EEXIST') return
      throw again
    }
  }
  try {
    // test runs of several users on one machine share the ports: each may add its own files, and the sticky
    // bit keeps one from removing another's, whose stale reservations are then only skipped
    chmodSync(dir, 0o1777)
  } catch {}
}

/** Creates the reservation file exclusively; false when it exists. */
function create(path: string, again = true): boolean {
  let fd: number
  try {
    fd = openSync(path, 'wx', 0o644)
  } catch (err) {
    if (errCode(err) === 'EEXIST') return false
    if (errCode(err) !== 'ENOENT' || !again) throw err
    // the directory went (the last process to exit removes it when empty): make it again
    ensureDir(dirname(path))
    return create(path, false)
  }
  const content = `${process.pid} ${Date.now()}\n`
  try {
    writeSync(fd, content)
  } finally {
    closeSync(fd)
  }
  mine.set(path, content)
  if (!exitHooked) {
    exitHooked = true
    process.on('exit', releaseAll)
  }
  return true
}

/**
 * The file at `path` (its inode and first bytes, read through one descriptor), undefined when absent; a
 * symbolic link is no reservation and no process's to take over (inode -1).
 */
function look(path: string): { ino: number; mtimeMs: number; content: string } | undefined {
  let fd: number
  try {
    // never through a symbolic link: a file someone placed there is not a reservation to read or move
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  } catch (err) {
    if (errCode(err) === 'ENOENT') return undefined
    if (errCode(err) === 'ELOOP') return { ino: -1, mtimeMs: Date.now(), content: '' }
    throw err
  }
  try {
    const st = fstatSync(fd)
    const buf = Buffer.alloc(64)
    const n = readSync(fd, buf, 0, buf.length, 0)
    return { ino: st.ino, mtimeMs: st.mtimeMs, content: buf.toString('latin1', 0, n) }
  } finally {
    closeSync(fd)
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: alive, another user's
    return errCode(err) !== 'ESRCH'
  }
}

/** Whether a reservation seen as `content` (written at `mtimeMs`) no longer holds its port. */
function stale(content: string, mtimeMs: number, now: number): boolean {
  const m = /^(\d+) (\d+)\n$/.exec(content)
  if (now - (m ? Number(m[2]) : mtimeMs) >= RESERVATION_TTL_MS) return true
  // no content yet: its owner is between creating the file and writing its pid
  if (!m) return false
  const pid = Number(m[1])
  return pid <= 0 || !alive(pid)
}

/**
 * Reserves `port` in `dir` for this process until it exits: true when it is now this process's, false when
 * another live process holds it (or this one already does). A reservation whose pid is gone, or older than
 * RESERVATION_TTL_MS, is taken over.
 */
export function reservePort(port: number, dir: string = RESERVATION_DIR): boolean {
  const path = join(dir, String(port))
  if (mine.has(path)) return false
  if (create(path)) return true
  const seen = look(path)
  if (seen === undefined) return create(path)
  if (seen.ino === -1 || !stale(seen.content, seen.mtimeMs, Date.now())) return false
  // Several processes may find the same stale file at once, and one of them may have replaced it with its
  // own reservation before another deletes "the stale file". The right to take over this one file (its inode
  // and content) goes to whoever creates its claim file first; the claimant deletes the reservation only if
  // it is still that file, which nobody else can now remove (its owner is gone, or past the TTL).
  const key = /^(\d+) (\d+)\n$/.exec(seen.content)
  const claim = `${path}.takeover-${seen.ino}-${key ? `${key[1]}-${key[2]}` : Math.floor(seen.mtimeMs)}`
  try {
    closeSync(openSync(claim, 'wx', 0o644))
  } catch (err) {
    if (errCode(err) === 'EEXIST') return false
    // the directory went since the look, and the stale file with it
    if (errCode(err) === 'ENOENT') return create(path)
    throw err
  }
  try {
    const current = look(path)
    if (current !== undefined) {
      if (current.ino !== seen.ino || current.content !== seen.content) return false
      unlinkSync(path)
    }
    return create(path)
  } catch (err) {
    // another user's file in the shared directory: skipped, not taken
    if (errCode(err) === 'EPERM' || errCode(err) === 'EACCES') return false
    throw err
  } finally {
    // whoever claims this file from now on finds a reservation other than it at `path`, and leaves that be
    try {
      unlinkSync(claim)
    } catch {}
  }
}

/** Gives up this process's reservation of `port` in `dir` (a no-op when it holds none). */
export function releasePort(port: number, dir: string = RESERVATION_DIR): void {
  release(join(dir, String(port)))
}

function release(path: string): void {
  const content = mine.get(path)
  if (content === undefined) return
  mine.delete(path)
  try {
    // only while it is still ours: after RESERVATION_TTL_MS another process may have taken the port over
    if (look(path)?.content === content) unlinkSync(path)
  } catch {}
}

function releaseAll(): void {
  for (const path of [...mine.keys()]) release(path)
  try {
    // the last process out leaves nothing in the temp directory; any other finds the directory not empty
    rmdirSync(RESERVATION_DIR)
  } catch {}
}

function reserve(port: number): boolean {
  if (!sharedUsable) return true
  try {
    return reservePort(port)
  } catch (err) {
    sharedUsable = false
    process.emitWarning(
      `port reservations in ${RESERVATION_DIR} are unavailable (${errCode(err) ?? err}): ports handed out ` +
        'by this process are not kept from other processes',
    )
    return true
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

async function kernelPort(): Promise<number> {
  const srv = createServer()
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  const addr = srv.address()
  const port = typeof addr === 'object' && addr ? addr.port : 0
  await new Promise<void>((resolve) => srv.close(() => resolve()))
  return port
}

/**
 * A port that was free a moment ago on 127.0.0.1, for a child process told its port up front, and that no
 * other process on this machine gets from `freePort` while this one runs (for RESERVATION_TTL_MS at most).
 * Chosen at random between 20000 and the kernel's ephemeral range (see above); where that range starts too
 * low to leave room, whatever port 0 gives. Reserved before the listen check: the check's own brief listen
 * must not land on a port another process has just handed to its child.
 */
export async function freePort(): Promise<number> {
  const span = ephemeralLow - ASSIGNED_LOW
  for (let attempt = 0; span >= 1_000 && attempt < 64; attempt++) {
    const port = ASSIGNED_LOW + Math.floor(Math.random() * span)
    if (handedOut.has(port) || !reserve(port)) continue
    if (!(await canListen(port))) {
      releasePort(port)
      continue
    }
    handedOut.add(port)
    return port
  }
  // the kernel does not hand out a port bound at the moment; reserved too, against another fallback's pick
  let port = await kernelPort()
  for (let attempt = 0; attempt < 8 && !reserve(port); attempt++) port = await kernelPort()
  return port
}
