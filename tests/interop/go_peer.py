"""A go-libp2p peer for the interop tests: p2pd (go-libp2p-daemon), driven over its control socket.

    python go_peer.py P2PD PROTO_DIR [yamux|mplex]

Speaks the same JSON lines on stdin/stdout as js/peer.mjs, so tests drive both
peers alike. This process imports p2pd's generated protobuf module (from the
hivemind wheel, see setup_peers.py) and never py-libp2p: their generated
modules clash.

p2pd joins each libp2p stream to a unix socket (doStreamPipe in its stream.go):
when either side reaches end of stream it closes the other side fully, and any
copy error resets the libp2p stream. So through p2pd:
  * closeWrite (shutdown of our socket's write side) makes p2pd Close() the
    libp2p stream: the module reads end of stream, and p2pd stops reading;
  * abort closes our socket with unread data in it: p2pd's read fails with
    ECONNRESET and it resets the libp2p stream;
  * a reset from the module reaches us as our socket closing, and p2pd logs
    go-libp2p's own error ("stream reset"): see the "log" op.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any

import base58
from multiaddr import Multiaddr

P2PD, PROTO_DIR = sys.argv[1], sys.argv[2]
MUXER = sys.argv[3] if len(sys.argv) > 3 else "yamux"
sys.path.insert(0, PROTO_DIR)
import p2pd_pb2 as pb  # noqa: E402
from google.protobuf.internal.decoder import _DecodeVarint  # noqa: E402
from google.protobuf.internal.encoder import _VarintBytes  # noqa: E402


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pattern(size: int, seed: int) -> bytes:
    out_ = bytearray()
    block = hashlib.sha256(f"seed-{seed}".encode()).digest()
    while len(out_) < size:
        out_ += block
        block = hashlib.sha256(block).digest()
    return bytes(out_[:size])


def unix_maddr(path: str) -> bytes:
    """/unix/<path> as multiaddr bytes, the path keeping its leading slash (as go-multiaddr
    expects; py-multiaddr drops it)."""
    raw = path.encode()
    return bytes(_VarintBytes(400)) + bytes(_VarintBytes(len(raw))) + raw


class PeerError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _die_with_parent() -> None:
    """In the child: SIGKILL it when this driver dies, however it dies (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Stream:
    """One libp2p stream, as p2pd's unix socket.

    The socket is read only when asked (no eager transport), so bytes we have
    not read stay in the kernel: closing the socket then makes p2pd's read
    fail with ECONNRESET, which is how a p2pd client resets a stream.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _more(self) -> bool:
        chunk = await self.loop.sock_recv(self.sock, 65536)
        self.buf += chunk
        return bool(chunk)

    async def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._more():
                raise PeerError("EndOfStream", f"end of stream after {len(self.buf)} of {n} bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def rest(self) -> bytes:
        while await self._more():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def read_some(self) -> bytes:
        if not self.buf and not await self._more():
            return b""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def varint(self) -> int:
        head = b""
        while True:
            head += await self.take(1)
            if not head[-1] & 0x80:
                return int(_DecodeVarint(head, 0)[0])

    async def message(self, cls: Any) -> Any:
        msg = cls()
        msg.ParseFromString(await self.take(await self.varint()))
        return msg

    def unread(self) -> int:
        import fcntl
        import struct
        import termios

        return int(struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


def frame(msg: Any) -> bytes:
    data = msg.SerializeToString()
    return bytes(_VarintBytes(len(data))) + data


class Daemon:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="p2pd-")
        self.ctl = os.path.join(self.dir, "ctl.sock")
        self.log_path = os.path.join(self.dir, "p2pd.log")
        self.streams: dict[str, Stream] = {}
        self.inbound = 0
        self.handlers: dict[str, Any] = {}
        self.tasks: set[asyncio.Future[Any]] = set()

    def _spawn(self) -> None:
        env = dict(os.environ, GOLOG_LOG_LEVEL="p2pd=debug")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    P2PD,
                    "-listen",
                    f"/unix{self.ctl}",
                    "-hostAddrs",
                    "/ip4/127.0.0.1/tcp/0",
                    "-muxer",
                    MUXER,
                    "-relay=false",
                    "-autonat=false",
                    "-natPortMap=false",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                preexec_fn=_die_with_parent,
            )

    async def start(self) -> None:
        """Start p2pd and ask it who it is, once its control socket takes connections: it
        binds the socket's file before it listens, so a connection may be refused at first
        (polling, bounded: the daemon is another process, with nothing to wait on)."""
        self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                self.identity = (await self.request(pb.Request(type=pb.Request.IDENTIFY))).identify
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline or self.proc.poll() is not None:
                    raise
                await asyncio.sleep(0.05)

    async def request(self, req: Any, keep: bool = False) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.ctl)
        except BaseException:
            sock.close()
            raise
        conn = Stream(sock)
        await conn.send(frame(req))
        resp = await conn.message(pb.Response)
        if resp.type == pb.Response.ERROR:
            sock.close()
            raise PeerError("DaemonError", resp.error.msg)
        if keep:
            return resp, conn
        sock.close()
        return resp

    def peer_id(self) -> str:
        return base58.b58encode(self.identity.id).decode()

    # -- ops ----------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        peer = self.peer_id()
        return {"peerId": peer, "addrs": [f"{Multiaddr(a)}/p2p/{peer}" for a in self.identity.addrs]}

    async def open(self, key: str, addr: str, protocols: list[str]) -> dict[str, Any]:
        transport, peer = addr.rsplit("/p2p/", 1)
        peer_bytes = base58.b58decode(peer)
        await self.request(
            pb.Request(
                type=pb.Request.CONNECT,
                connect=pb.ConnectRequest(peer=peer_bytes, addrs=[Multiaddr(transport).to_bytes()]),
            )
        )
        resp, conn = await self.request(
            pb.Request(
                type=pb.Request.STREAM_OPEN,
                streamOpen=pb.StreamOpenRequest(peer=peer_bytes, proto=protocols, timeout=10),
            ),
            keep=True,
        )
        self.streams[key] = conn
        return {"protocol": resp.streamInfo.proto, "muxer": MUXER}

    async def _listen(self, protocol: str, on_stream: Any) -> None:
        path = os.path.join(self.dir, f"h{len(self.handlers)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()

        async def accepted(sock: socket.socket) -> None:
            conn = Stream(sock)
            info = await conn.message(pb.StreamInfo)
            key = f"in-{self.inbound}"
            self.inbound += 1
            self.streams[key] = conn
            out(
                {
                    "event": "stream",
                    "key": key,
                    "protocol": info.proto,
                    "remotePeer": base58.b58encode(info.peer).decode(),
                    "muxer": MUXER,
                }
            )
            await on_stream(key)

        async def accept_loop() -> None:
            while True:
                sock, _ = await loop.sock_accept(listener)
                self.tasks.add(asyncio.ensure_future(accepted(sock)))

        self.handlers[protocol] = (listener, path, asyncio.ensure_future(accept_loop()))
        await self.request(
            pb.Request(
                type=pb.Request.STREAM_HANDLER,
                streamHandler=pb.StreamHandlerRequest(addr=unix_maddr(path), proto=[protocol], balanced=False),
            )
        )

    async def handle(self, protocol: str) -> bool:
        async def hold(key: str) -> None:
            pass

        await self._listen(protocol, hold)
        return True

    async def handleEcho(self, protocol: str) -> bool:
        await self._listen(protocol, self._echo)
        return True

    async def echo(self, key: str) -> bool:
        task = asyncio.ensure_future(self._echo(key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _echo(self, key: str) -> None:
        """Echo until the module half-closes, then half-close too."""
        stream = self.streams[key]
        while data := await stream.read_some():
            await stream.send(data)
        stream.sock.shutdown(socket.SHUT_WR)

    async def unhandle(self, protocol: str) -> bool:
        listener, path, accepting = self.handlers.pop(protocol)
        await self.request(
            pb.Request(
                type=pb.Request.REMOVE_STREAM_HANDLER,
                removeStreamHandler=pb.RemoveStreamHandlerRequest(addr=unix_maddr(path), proto=[protocol]),
            )
        )
        accepting.cancel()
        listener.close()
        return True

    async def write(self, key: str, data: str) -> bool:
        await self.streams[key].send(base64.b64decode(data))
        return True

    async def writePattern(self, key: str, size: int, seed: int) -> str:
        data = pattern(size, seed)
        await self.streams[key].send(data)
        return hashlib.sha256(data).hexdigest()

    async def writeLp(self, key: str, frames: list[str]) -> int:
        wire = b"".join(_VarintBytes(len(f)) + f for f in (base64.b64decode(x) for x in frames))
        await self.streams[key].send(wire)
        return len(wire)

    async def readExactly(self, key: str, n: int) -> str:
        return b64(await self.streams[key].take(n))

    async def readAll(self, key: str) -> str:
        return b64(await self.streams[key].rest())

    async def drain(self, key: str) -> dict[str, Any]:
        """Read and drop everything until p2pd closes our socket."""
        stream = self.streams[key]
        total = len(stream.buf)
        stream.buf.clear()
        while chunk := await self.loop_recv(stream):
            total += len(chunk)
        return {"bytes": total, "error": None}

    @staticmethod
    async def loop_recv(stream: Stream) -> bytes:
        return await stream.loop.sock_recv(stream.sock, 1 << 20)

    async def readHash(self, key: str) -> dict[str, Any]:
        data = await self.streams[key].rest()
        return {"size": len(data), "sha": hashlib.sha256(data).hexdigest()}

    async def readLp(self, key: str, count: int) -> list[str]:
        stream = self.streams[key]
        frames = []
        for _ in range(count):
            size = await stream.varint()  # protobuf's own uvarint decoder, the framing p2pd uses
            frames.append(b64(await stream.take(size)))
        return frames

    async def closeWrite(self, key: str) -> bool:
        self.streams[key].sock.shutdown(socket.SHUT_WR)
        return True

    async def abort(self, key: str) -> bool:
        """Close our socket with unread data in it: p2pd reads ECONNRESET and resets the stream."""
        stream = self.streams[key]
        for _ in range(200):  # the module's bytes may still be on their way
            if stream.unread():
                break
            await asyncio.sleep(0.01)
        else:
            raise PeerError("CannotReset", "p2pd resets a stream only when its socket closes with unread data")
        stream.sock.close()
        return True

    async def hangUp(self, peerId: str) -> bool:
        await self.request(
            pb.Request(type=pb.Request.DISCONNECT, disconnect=pb.DisconnectRequest(peer=base58.b58decode(peerId)))
        )
        return True

    def _read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    async def log(self) -> str:
        return await asyncio.to_thread(self._read_log)

    async def stop(self) -> bool:
        self.proc.send_signal(signal.SIGTERM)
        return True


async def main() -> None:
    daemon = Daemon()
    await daemon.start()
    info = await daemon.info()
    out({"event": "ready", **info, "daemonPid": daemon.proc.pid, "daemonDir": daemon.dir})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def run(cmd: dict[str, Any]) -> None:
        op = cmd.pop("op")
        call_id = cmd.pop("id")
        try:
            out({"id": call_id, "ok": await getattr(daemon, op)(**cmd)})
        except PeerError as exc:
            out({"id": call_id, "error": {"name": exc.name, "message": str(exc)}})
        except Exception as exc:
            out({"id": call_id, "error": {"name": type(exc).__name__, "message": str(exc)}})

    tasks = set()
    try:
        while line := await reader.readline():
            task = asyncio.ensure_future(run(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        daemon.proc.kill()
        daemon.proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
