"""Echo over libp2p, handled by a module in its own process.

    python examples/echo/echo.py serve [--rpc ADDR]
        Register /echo/1.0.0 on the node: each stream is echoed byte for byte
        until the peer half-closes, then closed.

    python examples/echo/echo.py ping PEER_ADDR [--rpc ADDR] [--message TEXT] [--count N]
        Through the node, open /echo/1.0.0 on PEER_ADDR (a multiaddr ending in
        /p2p/<peer id>), send TEXT, half-close, and check what comes back.
        Exits 0 only if every echo matches.

ADDR is the node's RPC endpoint (unix:PATH or tcp:HOST:PORT); by default
$LOGOS_P2P_RPC or the node's default socket.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from logos_p2p.client import LogosP2PError, Stream, connect

PROTOCOL = "/echo/1.0.0"


def short(peer_id: str) -> str:
    return f"{peer_id[:8]}..{peer_id[-4:]}"


async def echo(stream: Stream) -> None:
    """One inbound stream: echo until the peer half-closes (returning closes it)."""
    total = 0
    async for chunk in stream:
        await stream.write(chunk)
        total += len(chunk)
    print(f"echo: {total} bytes echoed to {short(stream.remote_peer_id)}", flush=True)


async def serve(rpc: str | None) -> None:
    async with connect(rpc, name="echo") as node:
        me = await node.info()
        async with node.handle([PROTOCOL], echo):
            print(f"echo: serving {PROTOCOL} on node {short(me.peer_id)}", flush=True)
            await node.disconnected.wait()  # until the node goes away, or ^C
    print("echo: the node went away", flush=True)


async def ping(rpc: str | None, peer_addr: str, message: bytes, count: int) -> bool:
    if "/p2p/" not in peer_addr:
        raise SystemExit("ping: PEER_ADDR must end in /p2p/<peer id>")
    peer_id = peer_addr.rsplit("/p2p/", 1)[1]
    ok = True
    async with connect(rpc, name="echo-ping") as node:
        me = await node.info()
        for _ in range(count):
            started = time.perf_counter()
            stream = await node.open_stream(peer_id, [PROTOCOL], addrs=[peer_addr], timeout=10)
            async with stream:
                await stream.write(message)
                await stream.close_write()  # the peer reads end of stream, echoes, closes
                back = await stream.read_all()
            elapsed = (time.perf_counter() - started) * 1000
            match = back == message
            ok &= match
            print(
                f"ping: node {short(me.peer_id)} -> {short(peer_id)} {PROTOCOL}: "
                f"sent {len(message)} bytes, got {len(back)} back in {elapsed:.2f} ms: "
                f"{back!r} {'matches' if match else 'DOES NOT MATCH'}",
                flush=True,
            )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc", help="the node's RPC endpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="echo every stream of /echo/1.0.0")
    ping_cmd = sub.add_parser("ping", help="check an echo on a remote peer")
    ping_cmd.add_argument("peer_addr")
    ping_cmd.add_argument("--message", default="hello, libp2p")
    ping_cmd.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    try:
        if args.command == "serve":
            asyncio.run(serve(args.rpc))
            return 0
        return 0 if asyncio.run(ping(args.rpc, args.peer_addr, args.message.encode(), args.count)) else 1
    except KeyboardInterrupt:
        return 130
    except LogosP2PError as exc:
        print(f"echo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
