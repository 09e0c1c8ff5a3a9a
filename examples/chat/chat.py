"""A terminal chat over libp2p, handled by a module in its own process.

    python examples/chat/chat.py --nick NAME [--rpc ADDR] [PEER_ADDR]

Type a line to send it to everyone you are talking with. Commands:

    /connect PEER_ADDR   start a conversation (PEER_ADDR ends in /p2p/<peer id>)
    /who                 list the conversations
    /quit                leave every conversation and exit

Protocol /chat/1.0.0: one long-lived stream per conversation, each message
an unsigned-varint length-prefixed frame (write_lp/read_lp) holding a UTF-8
JSON object: {"type": "hello", "nick": ...} first, then {"type": "msg",
"text": ...}, and {"type": "bye"} before a clean close. Either side may start.
A peer that leaves cleanly reads as "left"; a reset or a lost connection is
told apart.

The node's connections are shown too, from its peer events (Node.peer_events):
"* bob connected" and "* bob disconnected (closedByPeer)" -- a connection to a peer's node,
which outlives the conversations on it (bob's chat can quit and come back on it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from logos_p2p.client import (
    ConnectionLost,
    EndOfStream,
    LogosP2PError,
    Node,
    NodeUnavailable,
    PeerConnected,
    PeerDisconnected,
    PeerEvents,
    PeerEventsOverflowed,
    Stream,
    StreamReset,
    connect,
)

PROTOCOL = "/chat/1.0.0"
MAX_FRAME = 64 * 1024


def say(text: str) -> None:
    print(text, flush=True)


def short(peer_id: str) -> str:
    return f"{peer_id[:8]}..{peer_id[-4:]}"


class Conversation:
    def __init__(self, chat: Chat, stream: Stream) -> None:
        self.chat = chat
        self.stream = stream
        self.nick = short(stream.remote_peer_id)

    async def send(self, message: dict[str, Any]) -> None:
        await self.stream.write_lp(json.dumps(message).encode())

    async def run(self) -> None:
        """Greet, then show the peer's messages until it leaves."""
        self.chat.conversations.add(self)
        try:
            await self.send({"type": "hello", "nick": self.chat.nick})
            while True:
                try:
                    message = json.loads(await self.stream.read_lp(MAX_FRAME))
                except EndOfStream:
                    say(f"* {self.nick} left")
                    return
                kind = message.get("type")
                if kind == "hello":
                    self.nick = str(message.get("nick", self.nick))[:32]
                    self.chat.names[self.stream.remote_peer_id] = self.nick
                    say(f"* {self.nick} joined ({short(self.stream.remote_peer_id)})")
                elif kind == "msg":
                    say(f"<{self.nick}> {message.get('text', '')}")
                elif kind == "bye":
                    say(f"* {self.nick} left")
                    return
        except LogosP2PError as exc:
            if not self.chat.quitting:
                say(f"* {self.nick} left: {describe(exc)}")
        except ValueError as exc:  # not our protocol
            say(f"* {self.nick} sent garbage ({exc}); hanging up")
            await self.stream.reset()
        finally:
            self.chat.conversations.discard(self)
            with contextlib.suppress(LogosP2PError):
                await self.stream.close()

    async def leave(self) -> None:
        try:
            await self.send({"type": "bye"})
            await self.stream.close()
        except LogosP2PError:
            await self.stream.reset()


def describe(exc: LogosP2PError) -> str:
    if isinstance(exc, NodeUnavailable):
        return "our node went away"
    if isinstance(exc, ConnectionLost):
        return "the connection was lost"
    if isinstance(exc, StreamReset):
        return "the stream was reset"
    return f"{type(exc).__name__}: {exc}"


class Chat:
    def __init__(self, node: Node, nick: str) -> None:
        self.node = node
        self.nick = nick
        self.conversations: set[Conversation] = set()
        self.names: dict[str, str] = {}  # peer id -> the nick it last said hello with
        self.tasks: set[asyncio.Future[None]] = set()
        self.quitting = False

    async def accept(self, stream: Stream) -> None:
        """A conversation someone else started (the handler owns the stream)."""
        say(f"* {short(stream.remote_peer_id)} started a conversation")
        await Conversation(self, stream).run()

    def name(self, peer_id: str) -> str:
        return self.names.get(peer_id, short(peer_id))

    async def watch(self, events: PeerEvents) -> None:
        """The node's connections to other nodes, as they come and go (until our node goes away)."""
        async for event in events:
            if isinstance(event, PeerConnected):
                say(f"* {self.name(event.peer_id)} connected")
            elif isinstance(event, PeerDisconnected):
                say(f"* {self.name(event.peer_id)} disconnected ({event.reason})")
            elif isinstance(event, PeerEventsOverflowed):
                say("* missed some connections coming and going")
            # PeerIdentified (the peer's protocols and agent) is not shown

    async def start(self, peer_addr: str) -> None:
        if "/p2p/" not in peer_addr:
            say("* /connect needs a multiaddr ending in /p2p/<peer id>")
            return
        peer_id = peer_addr.rsplit("/p2p/", 1)[1]
        try:
            stream = await self.node.open_stream(peer_id, [PROTOCOL], addrs=[peer_addr], timeout=10)
        except LogosP2PError as exc:
            say(f"* cannot reach {short(peer_id)}: {type(exc).__name__}: {exc}")
            return
        say(f"* talking with {short(peer_id)}")
        task = asyncio.ensure_future(Conversation(self, stream).run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def broadcast(self, text: str) -> None:
        if not self.conversations:
            say("* nobody is listening: /connect PEER_ADDR first")
            return
        for conversation in list(self.conversations):
            with contextlib.suppress(LogosP2PError):  # its reader reports why
                await conversation.send({"type": "msg", "text": text})

    async def repl(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode(errors="replace")
            if not line:
                return
            line = line.strip()
            if not line:
                continue
            if line == "/quit":
                return
            if line.startswith("/connect "):
                await self.start(line.split(None, 1)[1].strip())
            elif line == "/who":
                names = ", ".join(sorted(c.nick for c in self.conversations)) or "nobody"
                say(f"* talking with: {names}")
            elif line.startswith("/"):
                say("* commands: /connect PEER_ADDR, /who, /quit")
            else:
                await self.broadcast(line)


async def run(args: argparse.Namespace) -> int:
    async with connect(args.rpc, name=f"chat:{args.nick}") as node:
        chat = Chat(node, args.nick)
        me = await node.info()
        # subscribed before anything connects; the block ends the subscription
        async with node.peer_events() as events, node.handle([PROTOCOL], chat.accept):
            watcher = asyncio.ensure_future(chat.watch(events))
            say(f"chat: {args.nick} ready on {me.addrs[0]}")
            if args.peer:
                await chat.start(args.peer)
            repl = asyncio.ensure_future(chat.repl())
            gone = asyncio.ensure_future(node.disconnected.wait())
            await asyncio.wait([repl, gone], return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                say("* our node went away; exiting")
                repl.cancel()
                return 1
            gone.cancel()
            watcher.cancel()
            chat.quitting = True
            for conversation in list(chat.conversations):
                await conversation.leave()
    say("chat: bye")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nick", required=True)
    parser.add_argument("--rpc", help="the node's RPC endpoint (default: $LOGOS_P2P_RPC or its default socket)")
    parser.add_argument("peer", nargs="?", help="start a conversation with this multiaddr")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    except LogosP2PError as exc:
        print(f"chat: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
