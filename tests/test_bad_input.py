"""Bad input: every entry of the corpus gets a clear, typed error and the node keeps serving.

The corpus is data (:data:`CORPUS`): what a module calls, on what, and the error
type it must get. It runs on every data path. The byte-level cases (garbage and
truncated messages on the RPC socket, the data channel, the TCP endpoint) are
generated with hypothesis.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logos_p2p import _auth, _frames, _schema
from logos_p2p.client import connect
from logos_p2p.errors import (
    FrameTooLarge,
    InvalidArgument,
    LogosP2PError,
    ProtocolInUse,
    StreamClosed,
    StreamReset,
)

from .conftest import eventually, node_status, run_aio
from .support import peer as p
from .test_lifecycle import nothing_left

ECHO = "/echo/1.0.0"
OWNED = "/owned/1.0.0"
HOUR = 3600.0


async def _noop(stream: Any) -> None:
    await stream.close()


@dataclass(frozen=True)
class Case:
    name: str
    on: str  # "node", or the stream's state: "open", "closed", "write-closed", "reset", "remote-reset"
    call: Callable[[Any, Any], Awaitable[Any]]  # (client Node or Stream, context) -> awaitable
    error: type[LogosP2PError] | None  # None: the call succeeds and changes nothing


def _node(name: str, call: Callable[[Any, Any], Awaitable[Any]], error: type[LogosP2PError]) -> Case:
    return Case(name, "node", call, error)


def _register(*protocols: Any, **kw: Any) -> Callable[[Any, Any], Awaitable[Any]]:
    return lambda n, ctx: n.register(list(protocols), _noop, **kw)


def _open(peer_id: Any = None, protocols: Any = (ECHO,), addrs: Any = None, **kw: Any) -> Callable[..., Any]:
    def call(n: Any, ctx: Any) -> Awaitable[Any]:
        return n.open_stream(
            ctx.peer_id if peer_id is None else peer_id,
            list(protocols) if isinstance(protocols, tuple) else protocols,
            addrs=[ctx.peer_addr] if addrs is None else addrs,
            **kw,
        )

    return call


CORPUS: list[Case] = [
    # protocol ids
    _node("register no protocol id", _register(), InvalidArgument),
    _node("register an empty protocol id", _register(""), InvalidArgument),
    _node("register an id without a leading /", _register("echo/1.0.0"), InvalidArgument),
    _node("register an over-long id", _register("/" + "a" * 600), InvalidArgument),
    _node("register an id with a newline", _register("/a\n/b"), InvalidArgument),
    _node("register an id with a NUL", _register("/a\x00b"), InvalidArgument),
    _node("register an id that is not UTF-8", _register("/\udcff"), InvalidArgument),
    _node("register an id that is bytes", _register(b"/bytes"), InvalidArgument),
    _node("register 65 ids at once", _register(*(f"/p/{i}" for i in range(65))), InvalidArgument),
    _node("register a string, not a list", lambda n, ctx: n.register("/s/1", _noop), InvalidArgument),
    _node("register another module's id", _register(OWNED), ProtocolInUse),
    _node("register another module's id, sharing", _register(OWNED, share=True), ProtocolInUse),
    _node("register with a negative accept timeout", _register("/t/1", accept_timeout=-1), InvalidArgument),
    _node("register with a NaN accept timeout", _register("/t/1", accept_timeout=float("nan")), InvalidArgument),
    _node("register with a 30-day accept timeout", _register("/t/1", accept_timeout=30 * 24 * HOUR), InvalidArgument),
    # opening streams
    # (an empty peer id with addresses that end in /p2p/<peer id> is an open to that peer)
    _node("open to an empty peer id, no address naming one", _open(peer_id="", addrs=[]), InvalidArgument),
    _node("open to a peer id that is garbage", _open(peer_id="QmNotAPeer"), InvalidArgument),
    _node("open to a peer id that is not UTF-8", _open(peer_id="\udcff"), InvalidArgument),
    _node("open with no protocol id", _open(protocols=[]), InvalidArgument),
    _node("open with a bad protocol id", _open(protocols=["nope"]), InvalidArgument),
    _node("open with a string of protocols", _open(protocols="/echo/1.0.0"), InvalidArgument),
    _node("open with a garbage address", _open(addrs=["not-a-multiaddr"]), InvalidArgument),
    _node("open with 65 addresses", _open(addrs=["/ip4/127.0.0.1/tcp/1"] * 65), InvalidArgument),
    _node("open with a negative timeout", _open(timeout=-1), InvalidArgument),
    _node("open with an infinite timeout", _open(timeout=float("inf")), InvalidArgument),
    _node("open with a 100-year timeout", _open(timeout=100 * 365 * 24 * HOUR), InvalidArgument),
    _node("open to the node itself", lambda n, ctx: n.open_stream(ctx.node_id, [ECHO]), InvalidArgument),
    # peers
    _node("connect to garbage", lambda n, ctx: n.connect_peer("garbage"), InvalidArgument),
    _node("connect without /p2p/", lambda n, ctx: n.connect_peer("/ip4/127.0.0.1/tcp/1"), InvalidArgument),
    _node("connect with a zero timeout", lambda n, ctx: n.connect_peer(ctx.peer_full, timeout=0), InvalidArgument),
    _node("disconnect garbage", lambda n, ctx: n.disconnect_peer("garbage"), InvalidArgument),
    # stream operations: sizes
    Case("read 0 bytes", "open", lambda s, ctx: s.read(0), InvalidArgument),
    Case("read a negative size", "open", lambda s, ctx: s.read(-5), InvalidArgument),
    Case("read_exactly a negative size", "open", lambda s, ctx: s.read_exactly(-1), InvalidArgument),
    Case("read_lp a negative max size", "open", lambda s, ctx: s.read_lp(-1), InvalidArgument),
    Case("write a str", "open", lambda s, ctx: s.write("text"), InvalidArgument),
    Case("write None", "open", lambda s, ctx: s.write(None), InvalidArgument),
    Case("write_lp an int", "open", lambda s, ctx: s.write_lp(5), InvalidArgument),
    Case("read_lp a frame over max_size", "open", lambda s, ctx: _frame_over(s, 2**21, 1024), FrameTooLarge),
    Case("read_lp a frame length over 2^63", "open", lambda s, ctx: _frame_over(s, 2**64 + 5, 1024), FrameTooLarge),
    # stream operations: wrong state
    Case("write after close", "closed", lambda s, ctx: s.write(b"x"), StreamClosed),
    Case("write_lp after close", "closed", lambda s, ctx: s.write_lp(b"x"), StreamClosed),
    Case("read after close", "closed", lambda s, ctx: s.read(), StreamClosed),
    Case("close_write after close", "closed", lambda s, ctx: s.close_write(), StreamClosed),
    Case("write after close_write", "write-closed", lambda s, ctx: s.write(b"x"), StreamClosed),
    Case("close_write twice (a no-op, as trio's send_eof)", "write-closed", lambda s, ctx: s.close_write(), None),
    Case("write after our reset", "reset", lambda s, ctx: s.write(b"x"), StreamReset),
    Case("read after our reset", "reset", lambda s, ctx: s.read(), StreamReset),
    Case("close after our reset", "reset", lambda s, ctx: s.close(), StreamReset),
    Case("write after the peer's reset", "remote-reset", lambda s, ctx: s.write(b"x"), StreamReset),
    Case("read after the peer's reset", "remote-reset", lambda s, ctx: s.read(), StreamReset),
    Case("read_lp after the peer's reset", "remote-reset", lambda s, ctx: s.read_lp(), StreamReset),
]


async def _frame_over(stream: Any, length: int, max_size: int) -> Any:
    head = _frames.encode_uvarint(length) if length < 2**64 else b"\xff" * 10 + b"\x01"
    await stream.write(head)  # the echo peer sends the frame header back
    return await stream.read_lp(max_size)


@dataclass
class Context:
    peer_id: str
    peer_addr: str
    peer_full: str
    node_id: str


async def run_corpus(node: Any, ctx: Context) -> list[str]:
    """Run every case with the client ``node`` (in a module process: plain asyncio, as a
    module author's code); return the mismatches."""
    import asyncio

    from logos_p2p.errors import StreamReset

    async def stream_in(state: str) -> Any:
        if state == "remote-reset":  # the peer resets every stream on this protocol after a byte
            s = await node.open_stream(ctx.peer_id, ["/reset/1.0.0"], addrs=[ctx.peer_addr])
            await s.write(b"x")
            try:
                await asyncio.wait_for(s.read(), 5)
            except StreamReset:
                return s
            raise AssertionError("the peer did not reset")
        s = await node.open_stream(ctx.peer_id, [ECHO], addrs=[ctx.peer_addr])
        action = {"closed": s.close, "write-closed": s.close_write, "reset": s.reset}.get(state)
        if action is not None:
            await action()
        return s

    wrong = []
    for case in CORPUS:
        target = node if case.on == "node" else await stream_in(case.on)
        try:
            await asyncio.wait_for(case.call(target, ctx), 10)
        except TimeoutError:
            wrong.append(f"{case.name}: no answer within 10 s; stopping here")
            return wrong
        except Exception as exc:
            got: BaseException | None = exc
        else:
            got = None
        expected = type(None) if case.error is None else case.error
        if not isinstance(got, expected):
            wrong.append(f"{case.name}: expected {expected.__name__}, got {got!r}")
        if case.on != "node":
            await target.reset()
    # and the node still serves this very connection
    s = await node.open_stream(ctx.peer_id, [ECHO], addrs=[ctx.peer_addr])
    await s.write(b"still here")
    await s.close_write()
    if await s.read_all() != b"still here":
        wrong.append("the echo after the corpus did not come back")
    await s.close()
    return wrong


@pytest.mark.parametrize("data_path", ["socket", "push", "pull"])
async def test_every_bad_input_gets_its_typed_error_and_the_node_keeps_serving(node, peer, modules, nursery):
    owner = await modules(node, name="owner")
    await owner.call("register_holder", "h", [OWNED])
    peer.serve_echo(ECHO)
    resets = peer.serve("/reset/1.0.0")

    async def reset_each() -> None:
        async for stream in resets:
            await stream.read(1)
            await stream.reset()

    nursery.start_soon(reset_each)
    module = await modules(node, name="corpus")
    ctx = Context(peer.peer_id, peer.addr, f"{peer.addr}/p2p/{peer.peer_id}", node.peer_id)
    wrong = await module.call("corpus", ctx.__dict__, timeout=120)
    assert wrong == [], "\n".join(wrong)
    assert len(CORPUS) >= 50
    await nothing_left(node, modules_expected=2, registrations=1)


async def test_a_name_that_is_too_long_or_not_utf8_is_refused(node):
    async def attempt(name: str) -> type:
        try:
            async with connect(node.rpc, name=name):
                return type(None)
        except LogosP2PError as exc:
            return type(exc)

    for name in ("x" * 300, "\udcff", "tab\tname"):
        assert await run_aio(partial(attempt, name)) is InvalidArgument, name


# -- bytes on the sockets ----------------------------------------------------------------------------


def _unix_path(node) -> str:
    return node.rpc.removeprefix("unix:")


def _send_and_close(family: int, kind: int, address: Any, data: bytes) -> bytes:
    """Send ``data``, half-close, and return what came back before the node closed
    (or reset: then what was read before the reset; a timeout returns b"?")."""
    got = b""
    with socket.socket(family, kind) as sock:
        sock.settimeout(5)
        sock.connect(address)
        try:
            if kind == socket.SOCK_SEQPACKET:
                sock.send(data or b"\x00")
            else:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except OSError as exc:  # the node reset the connection before our half-close
            if exc.errno != errno.ENOTCONN:
                raise
        except TimeoutError:
            return b"?"
        return got


def _assert_serving(node) -> None:
    async def info() -> str:
        async with connect(node.rpc, name="after-garbage") as n:
            return (await n.info()).peer_id

    assert trio.run(run_aio, info) == node.peer_id
    assert node.proc.poll() is None


FRAMED = st.binary(max_size=64).map(
    lambda tail: (0).to_bytes(4, "little") + (len(tail) // 8 + 1).to_bytes(4, "little") + tail
)


def test_garbage_and_truncated_bytes_on_the_rpc_socket(node):
    """Random bytes, and Cap'n Proto framing with random contents, cut anywhere."""
    seen = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(st.binary(max_size=512), FRAMED, FRAMED.map(lambda b: b[: len(b) // 2])))
    def garbage(data: bytes) -> None:
        seen.append(len(data))
        assert _send_and_close(socket.AF_UNIX, socket.SOCK_STREAM, _unix_path(node), data) != b"?"  # never hangs

    garbage()
    assert len(seen) >= 100
    _assert_serving(node)
    trio.run(lambda: nothing_left(node))


def test_garbage_on_the_data_channel_socket(node):
    seen = []

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(st.binary(min_size=1, max_size=300), st.binary(min_size=32, max_size=32).map(_hello)))
    def garbage(data: bytes) -> None:
        seen.append(len(data))
        answer = _send_and_close(socket.AF_UNIX, socket.SOCK_SEQPACKET, _unix_path(node) + ".data", data)
        assert answer == b"", answer  # a made-up token: the node hangs up, sends nothing

    garbage()
    assert len(seen) >= 80
    _assert_serving(node)


def _hello(token: bytes) -> bytes:
    return _schema.load().ChannelMessage.new_message(hello=token).to_bytes()


def test_garbage_on_the_tcp_endpoint_never_reaches_a_capability(node_factory):
    tcp = node_factory(rpc="tcp:127.0.0.1:0")
    host, _, port = tcp.rpc.removeprefix("tcp:").rpartition(":")
    seen = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.binary(min_size=64, max_size=400))
    def garbage(data: bytes) -> None:
        seen.append(len(data))
        answer = _send_and_close(socket.AF_INET, socket.SOCK_STREAM, (host, int(port)), data)
        # the hello at most (a reset may cut it): never a Cap'n Proto answer
        assert _auth.MAGIC.startswith(answer[: len(_auth.MAGIC)]) and len(answer) <= _auth.HELLO_SIZE, answer

    garbage()

    async def refused_all() -> bool:
        return (await node_status(tcp.rpc))["authFailures"] == len(seen)

    trio.run(lambda: eventually(refused_all))


async def test_clients_that_connect_and_never_speak_cost_nothing_once_gone(node, peer, modules):
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(50)]
    try:
        for sock in silent:
            sock.connect(_unix_path(node))
        module = await modules(node)  # meanwhile, a real module is served
        await module.call("register_echo", "e", [ECHO])
        stream = await peer.open(node.addr, [ECHO])
        await stream.write(b"served")
        await stream.close_write()
        assert await p.read_all(stream) == b"served"

        async def all_there() -> bool:
            return len((await node_status(node.rpc))["modules"]) == 51

        await eventually(all_there)
    finally:
        for sock in silent:
            sock.close()
    await nothing_left(node, modules_expected=1, registrations=1)
