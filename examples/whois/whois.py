"""Who is that peer? One request, one reply, handled by a module in its own process.

    python examples/whois/whois.py serve --name NAME [--rpc ADDR]
        Answer /logos-p2p/whois/1.0.0 on the node: who we are (NAME, the node's
        peer id, the protocols the node's modules serve) and who asked (the
        requester's peer id, as libp2p authenticated it).

    python examples/whois/whois.py ask PEER_ADDR [--rpc ADDR] [--name NAME] [--json] [--timeout S]
        Through the node, ask PEER_ADDR (a multiaddr ending in /p2p/<peer id>)
        and print the answer (--json: as it came). Exits 0 with an answer, 1 if
        the peer gave none (the error says why), 2 if our node is unavailable.

Protocol /logos-p2p/whois/1.0.0: the request is one length-prefixed frame holding
a UTF-8 JSON object, {"name": <who asks>}; the reply is one frame holding
{"name": ..., "peer_id": ..., "protocols": [...], "you": <the requester's peer id>}.
The node does the framing and closes the stream (Node.serve / Node.request); a
request that is not such an object makes the serve function raise, which resets
that one stream.

ADDR is the node's RPC endpoint (unix:PATH or tcp:HOST:PORT); by default
$LOGOS_P2P_RPC or the node's default socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from logos_p2p.client import (
    EndOfStream,
    FrameTooLarge,
    LogosP2PError,
    NodeUnavailable,
    PeerUnreachable,
    ProtocolNotSupported,
    RequestInfo,
    StreamReset,
    Timeout,
    connect,
)

PROTOCOL = "/logos-p2p/whois/1.0.0"
MAX_SIZE = 64 * 1024  # a request or a reply larger than this is refused


def short(peer_id: str) -> str:
    return f"{peer_id[:8]}..{peer_id[-4:]}"


async def serve(rpc: str | None, name: str) -> None:
    async with connect(rpc, name=f"whois:{name}") as node:
        me = await node.info()

        async def answer(request: bytes, info: RequestInfo) -> bytes:
            """One request; raising (bad JSON, not an object) resets this stream only."""
            asker = str(json.loads(request)["name"])[:64]
            status = await node.status()  # every module of the node, this one included
            protocols = sorted({p for module in status["modules"] for p in module["protocols"]})
            print(f"whois: told {asker} ({short(info.remote_peer_id)}) who we are", flush=True)
            reply = {"name": name, "peer_id": me.peer_id, "protocols": protocols, "you": info.remote_peer_id}
            return json.dumps(reply).encode()

        # keep the Registration while serving: dropping it unregisters the protocol
        registration = await node.serve([PROTOCOL], answer, max_size=MAX_SIZE, timeout=10)
        print(f"whois: {name} serving {' '.join(registration.protocols)} on node {short(me.peer_id)}", flush=True)
        await node.disconnected.wait()  # until the node goes away, or ^C
    print("whois: the node went away", flush=True)


def why(exc: LogosP2PError, peer_id: str, timeout: float) -> str:
    """What a failed request means, by its type."""
    if isinstance(exc, ProtocolNotSupported):
        return f"{short(peer_id)} does not serve {PROTOCOL}"
    if isinstance(exc, PeerUnreachable):
        return f"cannot reach {short(peer_id)}: {exc}"
    if isinstance(exc, Timeout):
        return f"{short(peer_id)} did not answer within {timeout:g} s"
    if isinstance(exc, StreamReset):
        return f"the stream was reset ({exc.cause.value}): a whois server resets it if it cannot read the question"
    if isinstance(exc, FrameTooLarge):
        return f"{short(peer_id)} answered with more than {MAX_SIZE} bytes"
    if isinstance(exc, EndOfStream):
        return f"{short(peer_id)} closed the stream without answering"
    return str(exc)


async def ask(rpc: str | None, peer_addr: str, name: str, timeout: float, raw: bool) -> int:
    if "/p2p/" not in peer_addr:
        raise SystemExit("whois: PEER_ADDR must end in /p2p/<peer id>")
    peer_id = peer_addr.rsplit("/p2p/", 1)[1]
    question = json.dumps({"name": name}).encode()
    async with connect(rpc, name="whois-ask") as node:
        try:
            reply = await node.request(
                peer_id, [PROTOCOL], question, addrs=[peer_addr], timeout=timeout, max_size=MAX_SIZE
            )
        except NodeUnavailable:
            raise  # our node went away, not the peer (NodeShutdown is a StreamReset too): exit 2
        except (ProtocolNotSupported, PeerUnreachable, Timeout, StreamReset, FrameTooLarge, EndOfStream) as exc:
            print(f"whois: {type(exc).__name__}: {why(exc, peer_id, timeout)}", file=sys.stderr)
            return 1
    if raw:
        print(reply.decode(errors="replace"))
        return 0
    try:
        who = json.loads(reply)
        lines = [
            f"name:      {who['name']}",
            f"peer id:   {who['peer_id']}",
            f"serves:    {' '.join(who['protocols'])}",
            f"sees you:  {who['you']}",
        ]
    except (ValueError, KeyError, TypeError):
        print(f"whois: {short(peer_id)} answered something else: {reply[:200]!r}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc", help="the node's RPC endpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help=f"answer {PROTOCOL}")
    serve_cmd.add_argument("--name", required=True, help="who we say we are")
    ask_cmd = sub.add_parser("ask", help="ask a remote peer who it is")
    ask_cmd.add_argument("peer_addr")
    ask_cmd.add_argument("--name", default="someone", help="who we say is asking")
    ask_cmd.add_argument("--timeout", type=float, default=10.0)
    ask_cmd.add_argument("--json", action="store_true", help="print the reply as it came")
    args = parser.parse_args()
    try:
        if args.command == "serve":
            asyncio.run(serve(args.rpc, args.name))
            return 0
        return asyncio.run(ask(args.rpc, args.peer_addr, args.name, args.timeout, args.json))
    except KeyboardInterrupt:
        return 130
    except LogosP2PError as exc:
        print(f"whois: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
