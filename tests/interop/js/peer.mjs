// A js-libp2p peer for the interop tests, driven by JSON lines on stdin.
//
//   node peer.mjs [yamux|mplex]...        muxers in order of preference (default: yamux mplex)
//
// stdin:  {"id": 1, "op": "open", ...}   one command per line
// stdout: {"id": 1, "ok": ...} | {"id": 1, "error": {"name", "message"}} | {"event": ...}
//
// Every stream has a reader that buffers what arrives, so reads are commands
// like any other, and how the stream ended (end of stream, or the error
// js-libp2p raised, e.g. StreamResetError) is reported as js-libp2p saw it.

// libp2p 3.x needs Promise.withResolvers (Node 22); Node 20 gets it here, before libp2p loads.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { mplex } = await import('@libp2p/mplex')
const { identify } = await import('@libp2p/identify')
const { multiaddr } = await import('@multiformats/multiaddr')
const lp = await import('it-length-prefixed')
const { Uint8ArrayList } = await import('uint8arraylist')
const { createHash, randomBytes } = await import('node:crypto')
const readline = await import('node:readline')

const MUXERS = { yamux: () => yamux(), mplex: () => mplex() }
const wanted = process.argv.slice(2).length ? process.argv.slice(2) : ['yamux', 'mplex']

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: wanted.map((name) => MUXERS[name]()),
  services: { identify: identify() }
})

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const streams = new Map()
let inboundCount = 0

class Peer {
  constructor (stream) {
    this.stream = stream
    this.buf = new Uint8ArrayList()
    this.ended = false // the remote half-closed
    this.error = null // how the stream broke, as js-libp2p reported it
    this.waiters = []
    this.changes = 0 // bumped on every wake, so a waiter can tell it missed one
    this.pump()
  }

  async pump () {
    try {
      for await (const chunk of this.stream) {
        this.buf.append(chunk)
        this.wake()
      }
      this.ended = true
    } catch (err) {
      this.error = { name: err.name, message: err.message }
    }
    this.wake()
  }

  wake () {
    this.changes++
    for (const w of this.waiters.splice(0)) w()
  }
  changed () { return new Promise((resolve) => this.waiters.push(resolve)) }

  async take (n) {
    while (this.buf.byteLength < n) {
      if (this.error) throw Object.assign(new Error(this.error.message), { name: this.error.name })
      if (this.ended) throw Object.assign(new Error(`end of stream after ${this.buf.byteLength} of ${n} bytes`), { name: 'EndOfStream' })
      await this.changed()
    }
    const data = this.buf.subarray(0, n)
    this.buf.consume(n)
    return data
  }

  async rest () {
    while (!this.ended) {
      if (this.error) throw Object.assign(new Error(this.error.message), { name: this.error.name })
      await this.changed()
    }
    const data = this.buf.subarray()
    this.buf.consume(this.buf.byteLength)
    return data
  }

  async send (data) {
    const chunks = data.byteLength > 65536 ? split(data, 65536) : [data]
    for (const chunk of chunks) {
      if (!this.stream.send(chunk)) await this.stream.onDrain()
    }
  }
}

// echo a stream until the remote half-closes, then half-close too
async function echo (key) {
  const peer = streams.get(key)
  try {
    while (true) {
      while (peer.buf.byteLength === 0 && !peer.ended && !peer.error) await peer.changed()
      if (peer.buf.byteLength === 0) break
      const data = peer.buf.subarray()
      peer.buf.consume(data.byteLength)
      await peer.send(data)
    }
    if (!peer.error) await peer.stream.close()
  } catch (err) {
    out({ event: 'echo-error', key, name: err.name, message: err.message })
  }
}

function split (data, size) {
  const parts = []
  for (let i = 0; i < data.byteLength; i += size) parts.push(data.subarray(i, i + size))
  return parts
}

function pattern (size, seed) {
  const out = Buffer.alloc(size)
  let block = createHash('sha256').update(Buffer.from(`seed-${seed}`)).digest()
  for (let i = 0; i < size; i += block.length) {
    block.copy(out, i)
    block = createHash('sha256').update(block).digest()
  }
  return out
}

const sha = (data) => createHash('sha256').update(data).digest('hex')
const b64 = (data) => Buffer.from(data).toString('base64')
const unb64 = (text) => Buffer.from(text, 'base64')

function adopt (key, stream) {
  const peer = new Peer(stream)
  streams.set(key, peer)
  stream.addEventListener('close', (evt) => {
    out({ event: 'closed', key, error: evt.error ? { name: evt.error.name, message: evt.error.message } : null, local: evt.local ?? null })
  })
  return peer
}

const ops = {
  info: async () => ({ peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) }),

  handle: async ({ protocol }) => {
    await node.handle(protocol, (stream, connection) => {
      const key = `in-${inboundCount++}`
      adopt(key, stream)
      out({ event: 'stream', key, protocol: stream.protocol, remotePeer: connection.remotePeer.toString(), muxer: connection.multiplexer })
    })
    return true
  },

  handleEcho: async ({ protocol }) => {
    await node.handle(protocol, (stream, connection) => {
      const key = `echo-${inboundCount++}`
      adopt(key, stream)
      out({ event: 'stream', key, protocol: stream.protocol, remotePeer: connection.remotePeer.toString(), muxer: connection.multiplexer })
      void echo(key)
    })
    return true
  },

  echo: async ({ key }) => { void echo(key); return true },

  unhandle: async ({ protocol }) => { await node.unhandle(protocol); return true },

  open: async ({ key, addr, protocols }) => {
    const stream = await node.dialProtocol(multiaddr(addr), protocols, { signal: AbortSignal.timeout(10000) })
    const connection = node.getConnections().find((c) => c.streams.includes(stream))
    adopt(key, stream)
    return { protocol: stream.protocol, muxer: connection?.multiplexer ?? null }
  },

  write: async ({ key, data }) => { await streams.get(key).send(unb64(data)); return true },
  writePattern: async ({ key, size, seed }) => {
    const data = pattern(size, seed)
    await streams.get(key).send(data)
    return sha(data)
  },
  writeLp: async ({ key, frames }) => {
    const encoded = lp.encode.single(unb64(frames[0])) // one frame, the peer's own encoder
    const all = new Uint8ArrayList(encoded)
    for (const frame of frames.slice(1)) all.append(lp.encode.single(unb64(frame)))
    await streams.get(key).send(all.subarray())
    return all.byteLength
  },
  readExactly: async ({ key, n }) => b64(await streams.get(key).take(n)),
  readAll: async ({ key }) => b64(await streams.get(key).rest()),
  drain: async ({ key }) => {
    // read and drop everything until the stream ends; report how it ended
    const peer = streams.get(key)
    let bytes = 0
    while (true) {
      bytes += peer.buf.byteLength
      peer.buf.consume(peer.buf.byteLength)
      if (peer.error) return { bytes, error: peer.error.name }
      if (peer.ended) return { bytes, error: null }
      await peer.changed()
    }
  },
  readHash: async ({ key }) => {
    const data = await streams.get(key).rest()
    return { size: data.byteLength, sha: sha(data) }
  },
  readLp: async ({ key, count }) => {
    const peer = streams.get(key)
    const frames = []
    while (frames.length < count) frames.push(b64(await readOneFrame(peer)))
    return frames
  },
  closeWrite: async ({ key }) => { await streams.get(key).stream.close(); return true },
  abort: async ({ key }) => { streams.get(key).stream.abort(new Error('reset by the js peer')); return true },
  debug: async ({ key }) => {
    const p = streams.get(key)
    return { buffered: p.buf.byteLength, ended: p.ended, error: p.error, head: b64(p.buf.subarray(0, Math.min(16, p.buf.byteLength))) }
  },
  status: async ({ key }) => {
    const s = streams.get(key).stream
    return { status: s.status, readStatus: s.readStatus, writeStatus: s.writeStatus, remoteWriteStatus: s.remoteWriteStatus }
  },
  hangUp: async ({ peerId }) => {
    for (const c of node.getConnections()) if (c.remotePeer.toString() === peerId) await c.close()
    return true
  },
  stop: async () => { await node.stop(); return true }
}

async function readOneFrame (peer) {
  // it-length-prefixed decodes from an async source; feed it what is buffered, wait for more if short
  while (true) {
    const seen = peer.changes // decoding awaits: more may arrive meanwhile
    const available = new Uint8ArrayList(peer.buf.subarray())
    try {
      for await (const frame of lp.decode((async function * () { yield available })())) {
        const used = lp.encode.single(frame).byteLength
        peer.buf.consume(used)
        return frame.subarray()
      }
    } catch (err) {
      if (err.name !== 'UnexpectedEOFError' && err.code !== 'ERR_UNEXPECTED_EOF') throw err
    }
    if (peer.changes !== seen) continue
    if (peer.error) throw Object.assign(new Error(peer.error.message), { name: peer.error.name })
    if (peer.ended) throw Object.assign(new Error('end of stream inside a frame'), { name: 'EndOfStream' })
    await peer.changed()
  }
}

out({ event: 'ready', peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const cmd = JSON.parse(line)
  ops[cmd.op](cmd).then(
    (ok) => out({ id: cmd.id, ok }),
    (err) => out({ id: cmd.id, error: { name: err.name, message: err.message } })
  )
})
rl.on('close', () => { node.stop().finally(() => process.exit(0)) })
