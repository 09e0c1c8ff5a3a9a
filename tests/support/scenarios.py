"""Module-side code for tests: runs inside a module process (asyncio + client only).

Each function takes the driver's context first. Tests call them by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
from typing import Any

from logos_p2p.client import Stream

# -- generic stream access: tests drive a module-side stream op by op -------------------------


async def stream_op(ctx: Any, key: str, op: str, *args: Any) -> Any:
    result = getattr(ctx.streams[key], op)(*args)
    if asyncio.iscoroutine(result):
        result = await result
    return result


async def stream_attr(ctx: Any, key: str, name: str) -> Any:
    value = getattr(ctx.streams[key], name)
    return value.value if hasattr(value, "value") else value


async def read_with_timeout(ctx: Any, key: str, n: int, timeout: float) -> bytes | str:
    try:
        return await asyncio.wait_for(ctx.streams[key].read(n), timeout)
    except TimeoutError:
        return "timeout"


async def cancelled_read_exactly(ctx: Any, key: str, n: int, timeout: float) -> str:
    try:
        await asyncio.wait_for(ctx.streams[key].read_exactly(n), timeout)
    except TimeoutError:
        return "timeout"
    return "read"


async def two_reads(ctx: Any, key: str) -> list[str]:
    """Start two reads at once; report what each did."""
    stream = ctx.streams[key]
    first = asyncio.ensure_future(stream.read(10))
    await asyncio.sleep(0)
    try:
        await stream.read(10)
        second = "read"
    except Exception as exc:
        second = type(exc).__name__
    first.cancel()
    return ["pending", second]


async def drop(ctx: Any, key: str) -> int:
    """Forget a stream without closing it."""
    del ctx.streams[key]
    return gc.collect()


async def write_many(ctx: Any, key: str, chunk: int, total: int) -> int:
    stream: Stream = ctx.streams[key]
    sent = 0
    block = pattern(chunk)
    while sent < total:
        await stream.write(block)
        sent += chunk
        ctx.emit("progress", sent)
    return sent


async def read_reporting(ctx: Any, key: str, report_after: int) -> int:
    """Read to the end; emit "reading" once ``report_after`` bytes have arrived."""
    stream: Stream = ctx.streams[key]
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size >= report_after > size - len(chunk):
            ctx.emit("reading", size)
    return size


async def read_into_hash(ctx: Any, key: str) -> tuple[int, str]:
    stream: Stream = ctx.streams[key]
    digest = hashlib.sha256()
    size = 0
    async for chunk in stream:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


async def write_pattern(ctx: Any, key: str, size: int, seed: int = 1) -> str:
    stream: Stream = ctx.streams[key]
    data = pattern(size, seed)
    await stream.write(data)
    return hashlib.sha256(data).hexdigest()


def pattern(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


# -- streams: opening and accepting --------------------------------------------------------------


async def open_stream(ctx: Any, key: str, peer_id: str, protocols: list[str], addrs: list[str], timeout: float) -> Any:
    stream = await ctx.node.open_stream(peer_id, protocols, addrs=addrs, timeout=timeout)
    ctx.streams[key] = stream
    return {"protocol": stream.protocol, "direction": stream.direction, "remote_peer_id": stream.remote_peer_id}


async def register_holder(ctx: Any, key: str, protocols: list[str], share: bool = False) -> list[str]:
    """Register protocols; each inbound stream is kept in ctx.streams under a fresh key
    ("<key>-<n>") and announced as event "stream"; the handler holds it until signalled
    "release:<stream key>" (then returns, which closes it) or the stream finishes."""
    counter = iter(range(1_000_000))

    async def handler(stream: Stream) -> None:
        skey = f"{key}-{next(counter)}"
        ctx.streams[skey] = stream
        ctx.emit(
            "stream",
            {
                "key": skey,
                "protocol": stream.protocol,
                "remote_peer_id": stream.remote_peer_id,
                "direction": stream.direction,
                "remote_addr": stream.remote_addr,
            },
        )
        await ctx.wait(f"release:{skey}")
        if ctx.raise_on_release.get(skey):
            raise RuntimeError("handler failed on purpose")

    reg = await ctx.node.register(protocols, handler, share=share)
    ctx.registrations[key] = reg
    return list(reg.protocols)


async def register_echo(ctx: Any, key: str, protocols: list[str]) -> list[str]:
    async def echo(stream: Stream) -> None:
        async for chunk in stream:
            await stream.write(chunk)

    reg = await ctx.node.register(protocols, echo)
    ctx.registrations[key] = reg
    return list(reg.protocols)


async def register_failing(ctx: Any, key: str, protocols: list[str]) -> list[str]:
    async def failing(stream: Stream) -> None:
        await stream.read(1)
        raise RuntimeError("handler bug")

    reg = await ctx.node.register(protocols, failing)
    ctx.registrations[key] = reg
    return list(reg.protocols)


async def unregister(ctx: Any, key: str) -> None:
    await ctx.registrations.pop(key).unregister()


async def drop_registration(ctx: Any, key: str) -> int:
    del ctx.registrations[key]
    return gc.collect()


async def set_raise_on_release(ctx: Any, skey: str) -> None:
    ctx.raise_on_release[skey] = True


# -- node --------------------------------------------------------------------------------------------


async def node_call(ctx: Any, op: str, *args: Any) -> Any:
    result = await getattr(ctx.node, op)(*args)
    if hasattr(result, "__dataclass_fields__"):
        return {name: getattr(result, name) for name in result.__dataclass_fields__}
    if isinstance(result, list):
        return [{n: getattr(r, n) for n in r.__dataclass_fields__} for r in result]
    return result


async def wait_forever(ctx: Any) -> None:
    await asyncio.Event().wait()


async def use_as_context_manager(ctx: Any, key: str, fail: bool) -> str:
    stream = ctx.streams[key]
    try:
        async with stream:
            await stream.write(b"inside")
            if fail:
                raise ValueError("the block failed")
    except ValueError:
        return "raised"
    return "exited"


async def read_lp_error(ctx: Any, key: str, max_size: int) -> str:
    try:
        await ctx.streams[key].read_lp(max_size)
    except Exception as exc:
        return type(exc).__name__
    return "no error"


async def cut_rpc(ctx: Any) -> int:
    """Shut the RPC socket down under the client, as a broken connection would."""
    import os
    import socket
    import stat

    cut = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_UNIX and sock.getpeername():
                sock.shutdown(socket.SHUT_RDWR)
                cut += 1
        except OSError:
            pass
        finally:
            sock.close()
    await asyncio.wait_for(ctx.node.disconnected.wait(), 5)
    return cut


async def register_raw_dropper(ctx: Any, protocols: list[str]) -> None:
    """A Handler written against the schema directly, that lets every Stream go at once."""
    from logos_p2p import _schema

    rpc = _schema.load()

    class Dropper(rpc.Handler.Server):  # type: ignore[misc,name-defined]
        async def handle(self, stream: Any, info: Any, **_: Any) -> None:
            ctx.emit("dropped", info.id)  # return no sink; the stream capability is released

    answer = await ctx.node._cap.register(protocols=protocols, handler=Dropper(), options={})
    ctx.registrations["raw"] = answer.registration


async def pending_open(ctx: Any, key: str, peer_id: str, addr: str, timeout: float) -> str:
    ctx.emit("opening", key)
    await open_stream(ctx, key, peer_id, ["/never/1.0.0"], [addr], timeout)
    return "opened"


async def handle_block(ctx: Any, key: str, protocols: list[str]) -> str:
    """Serve protocols inside `async with node.handle(...)` until signalled "leave:<key>"."""
    counter = iter(range(1_000_000))

    async def handler(stream: Stream) -> None:
        skey = f"{key}-{next(counter)}"
        ctx.streams[skey] = stream
        ctx.emit("stream", {"key": skey})
        await ctx.wait(f"release:{skey}")

    async with ctx.node.handle(protocols, handler):
        ctx.emit("registered", key)
        await ctx.wait(f"leave:{key}")
    return "left"


_held: list[Any] = []


async def register_never_answers(ctx: Any, protocols: list[str], accept_timeout: float) -> None:
    """A raw Handler that takes every stream and never answers handle()."""
    from logos_p2p import _schema

    rpc = _schema.load()

    class Silent(rpc.Handler.Server):  # type: ignore[misc,name-defined]
        async def handle(self, stream: Any, info: Any, **_: Any) -> None:
            ctx.emit("offered", info.id)
            # held here, not only by this call: asyncio keeps a pending task weakly, and a
            # collected task would drop the stream (a reset of its own, before the timeout)
            never = asyncio.Event()
            _held.append((stream, never))
            await never.wait()

    options = {"acceptTimeoutMs": int(accept_timeout * 1000)}
    answer = await ctx.node._cap.register(protocols=protocols, handler=Silent(), options=options)
    ctx.registrations["silent"] = answer.registration


async def register_expect_error(ctx: Any, protocols: Any, share: bool = False) -> str:
    try:
        ctx.registrations[f"r{len(ctx.registrations)}"] = await ctx.node.register(protocols, _noop, share=share)
    except Exception as exc:
        return type(exc).__name__
    return "registered"


async def _noop(stream: Stream) -> None:
    await stream.write(b"served")


async def register_late_answer(ctx: Any, protocols: list[str]) -> None:
    """A raw Handler that answers handle() only when signalled "answer", with a sink
    that reports every end() as event "end"."""
    from logos_p2p import _schema

    rpc = _schema.load()

    class Sink(rpc.ByteSink.Server):  # type: ignore[misc,name-defined]
        async def push(self, data: bytes, **_: Any) -> None:
            ctx.emit("pushed", data)

        async def end(self, reason: Any, **_: Any) -> None:
            ctx.emit("end", str(reason.reset) if reason.which() == "reset" else "eof")

    class Late(rpc.Handler.Server):  # type: ignore[misc,name-defined]
        async def handle(self, stream: Any, info: Any, **_: Any) -> Any:
            ctx.streams["late"] = stream
            ctx.emit("offered", info.id)
            await ctx.wait("answer")
            return Sink()

    answer = await ctx.node._cap.register(protocols=protocols, handler=Late(), options={})
    ctx.registrations["late"] = answer.registration


async def send_and_receive(ctx: Any, key: str, size: int, expect: int, seed: int = 1) -> dict[str, Any]:
    """Write `size` pattern bytes while reading `expect` bytes, at the same time, on one stream."""
    stream: Stream = ctx.streams[key]
    data = pattern(size, seed)

    async def send() -> None:
        for i in range(0, size, 65536):
            await stream.write(data[i : i + 65536])

    sending = asyncio.ensure_future(send())
    received = await stream.read_exactly(expect)
    await sending
    return {"sent": hashlib.sha256(data).hexdigest(), "received": hashlib.sha256(received).hexdigest()}


async def echo_stream(ctx: Any, key: str) -> int:
    """Echo a held stream until the peer half-closes; then close it. Returns the byte count."""
    stream: Stream = ctx.streams[key]
    total = 0
    async for chunk in stream:
        await stream.write(chunk)
        total += len(chunk)
    await stream.close()
    return total


# -- security: what a module can (not) reach ------------------------------------------------------


async def forge_channel_reset(ctx: Any, stream_id: int) -> bool:
    """Ask our data channel to reset a stream id we never held (another module's)."""
    channel = ctx.node._channel
    if channel is None:
        return False
    channel.send_reset(stream_id, "localReset")
    # a round trip on the same channel: the node handled the forged reset before this answers
    await ctx.node.status()
    return True


async def register_many(ctx: Any, prefix: str, n: int) -> dict[str, int]:
    """Register ``prefix/<i>`` one by one; count what each attempt gave."""
    from logos_p2p.errors import LogosP2PError

    async def handler(stream: Stream) -> None:
        await stream.close()

    counts: dict[str, int] = {}
    for i in range(n):
        try:
            ctx.registrations[f"{prefix}/{i}"] = await ctx.node.register([f"{prefix}/{i}"], handler)
            outcome = "ok"
        except LogosP2PError as exc:
            outcome = type(exc).__name__
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


async def unregister_all(ctx: Any) -> int:
    regs = list(ctx.registrations.values())
    ctx.registrations.clear()
    for reg in regs:
        await reg.unregister()
    return len(regs)


async def corpus(ctx: Any, context: dict[str, str]) -> list[str]:
    """The bad-input corpus (tests/test_bad_input.py), run by this module."""
    from tests.test_bad_input import Context, run_corpus

    return await run_corpus(ctx.node, Context(**context))


async def register_soak(ctx: Any, key: str, protocols: list[str]) -> list[str]:
    """The soak's module: the first byte says what to do with the stream --
    ``E`` echo the rest and close, ``R`` echo a little then reset."""

    async def handler(stream: Stream) -> None:
        command = await stream.read_exactly(1)
        if command == b"R":
            await stream.write(await stream.read(100))
            await stream.reset()
            return
        async for chunk in stream:
            await stream.write(chunk)

    reg = await ctx.node.register(protocols, handler, share=True)
    ctx.registrations[key] = reg
    return list(reg.protocols)


async def read_slowly(ctx: Any, key: str, chunk: int, pause: float) -> tuple[int, str]:
    """Read to the end ``chunk`` bytes at a time, pausing between reads (a module slower
    than its peer); the size and sha256 of what arrived."""
    stream: Stream = ctx.streams[key]
    digest = hashlib.sha256()
    size = 0
    while data := await stream.read(chunk):
        digest.update(data)
        size += len(data)
        await asyncio.sleep(pause)
    return size, digest.hexdigest()


# -- the conformance suite (tests/test_conformance.py): one cell at a time ----------------------


async def forget_stream(ctx: Any, key: str) -> None:
    """After a cell: reset the stream if it is still there, and forget it."""
    stream = ctx.streams.pop(key, None)
    if stream is not None:
        await stream.reset()


async def _read_with(stream: Stream, method: str, size: int) -> bytes:
    if method == "read":
        out = bytearray()
        while chunk := await stream.read(65536):
            out += chunk
        return bytes(out)
    if method == "read_exactly":
        return await stream.read_exactly(size)
    if method == "read_all":
        return await stream.read_all()
    if method == "read_lp":
        return await stream.read_lp(max(size, 1))
    if method == "aiter":
        out = bytearray()
        async for chunk in stream:
            out += chunk
        return bytes(out)
    raise ValueError(method)


async def _end_of_stream(stream: Stream, method: str) -> str:
    """What the stream says after the peer's half-close, asked twice."""
    from logos_p2p.client import EndOfStream

    if method == "read_lp":
        for _ in range(2):
            try:
                await stream.read_lp()
            except EndOfStream:
                continue
            return "a frame after the end"
    seen = [await stream.read(1), await stream.read(1)]
    return "eof" if seen == [b"", b""] else f"bytes after the end: {seen!r}"


async def conform_read(ctx: Any, key: str, method: str, size: int) -> tuple[int, str, str]:
    """Read what the peer sends with ``method`` until its half-close; then write the size and
    digest of it back and close (the rest, after the peer's half-close)."""
    stream: Stream = ctx.streams[key]
    data = await _read_with(stream, method, size)
    end = await _end_of_stream(stream, method)
    digest = hashlib.sha256(data).hexdigest()
    await stream.write(f"{len(data)} {digest}".encode())
    await stream.close()
    del ctx.streams[key]
    return len(data), digest, end


async def conform_write(ctx: Any, key: str, method: str, size: int, how: str, seed: int) -> bytes:
    """Write ``size`` pattern bytes with ``method`` (whole, or in 4093-byte calls/frames), then
    half-close and read the peer's answer to the end."""
    stream: Stream = ctx.streams[key]
    data = pattern(size, seed)
    pieces = [data[i : i + 4093] for i in range(0, size, 4093)] if how == "pieces" else [data]
    for piece in pieces:
        await (stream.write(piece) if method == "write" else stream.write_lp(piece))
    await stream.close_write()
    answer = await stream.read_all()
    await stream.close()
    del ctx.streams[key]
    return answer


async def conform_reset_mid_read(ctx: Any, key: str, method: str, size: int) -> list[str]:
    """Wait in ``method`` for more than the peer sends before it resets; what each later call says."""
    stream: Stream = ctx.streams[key]
    outcomes = []
    ctx.emit("reading", key)
    for call in (
        lambda: _read_with(stream, method, size),
        lambda: stream.read(1),
        lambda: stream.write(b"x"),
        lambda: stream.close(),
    ):
        try:
            await call()
            outcomes.append("returned")
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            outcomes.append(f"{type(exc).__name__}:{cause.value if cause else ''}")
    del ctx.streams[key]
    return outcomes


async def conform_reset_mid_write(ctx: Any, key: str, seed: int) -> str:
    """Write pattern bytes in 64 KiB calls until the stream fails (the peer resets it)."""
    stream: Stream = ctx.streams[key]
    block = pattern(64 * 1024, seed)
    ctx.emit("writing", key)
    try:
        for _ in range(1024):  # 64 MiB: far more than any buffer between here and the peer
            await stream.write(block)
        await stream.close()
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        return f"{type(exc).__name__}:{cause.value if cause else ''}"
    finally:
        del ctx.streams[key]
    return "returned"


async def conform_module_resets(ctx: Any, key: str, after: int, writing: bool, seed: int) -> str:
    """Reset the stream after reading ``after`` bytes (``writing``: after writing them instead,
    with more on the way)."""
    stream: Stream = ctx.streams[key]
    if writing:
        data = pattern(4 * 1024 * 1024, seed)
        await stream.write(data[:after])
        more = asyncio.ensure_future(stream.write(data[after:]))
        await asyncio.sleep(0)
        await stream.reset()
        with contextlib.suppress(Exception):
            await more
    else:
        await stream.read_exactly(after)
        await stream.reset()
    del ctx.streams[key]
    return "reset"


async def conform_cancel(ctx: Any, key: str, method: str, size: int, timeout: float) -> tuple[str, int, str]:
    """Cancel one call of ``method`` mid-way (its ``timeout`` runs out while it waits, with part
    of the data buffered if the peer sent some); then read everything (read_lp: the frame, else
    read_all): nothing may be lost."""
    stream: Stream = ctx.streams[key]
    one_call = {
        "read": lambda: stream.read(65536),
        "aiter": lambda: stream.__anext__(),
        "read_exactly": lambda: stream.read_exactly(size),
        "read_all": lambda: stream.read_all(),
        "read_lp": lambda: stream.read_lp(size),
    }[method]
    ctx.emit("reading", key)
    try:
        await asyncio.wait_for(one_call(), timeout)
        first = "returned"
    except TimeoutError:
        first = "timeout"
    ctx.emit("cancelled", key)
    data = await (stream.read_lp(size) if method == "read_lp" else stream.read_all())
    await stream.close()
    del ctx.streams[key]
    return first, len(data), hashlib.sha256(data).hexdigest()


async def conform_reply(ctx: Any, key: str, size: int, seed: int) -> bytes:
    """Read the peer's request to its half-close, then write ``size`` pattern bytes and close."""
    stream: Stream = ctx.streams[key]
    request = await stream.read_all()
    await stream.write(pattern(size, seed))
    await stream.close()
    del ctx.streams[key]
    return request


async def register_hold_all(ctx: Any, key: str, protocols: list[str]) -> list[str]:
    """Register protocols whose handler keeps every stream open and never reads (no events)."""

    async def hold(stream: Stream) -> None:
        await asyncio.Event().wait()

    reg = await ctx.node.register(protocols, hold, share=False)
    ctx.registrations[key] = reg
    return list(reg.protocols)


# -- a module that breaks the rules (tests/test_admission.py) -------------------------------------


async def raw_datagram(ctx: Any, key: str, size: int) -> str:
    """Send one 'D' datagram of ``size`` bytes on a socket stream, as a module without our
    library might; then what a read says."""
    stream = ctx.streams[key]
    stream._t._sock.send(b"D" + b"x" * size)
    try:
        await stream.read(10)
    except Exception as exc:
        return f"{type(exc).__name__}:{getattr(getattr(exc, 'cause', None), 'value', '')}"
    return "read"


async def channel_garbage(ctx: Any, datagrams: list[bytes]) -> int:
    """Send raw datagrams on the data channel; then a round trip, so the node has read them."""
    channel = ctx.node._channel
    for data in datagrams:
        channel.sock.send(data)
    await ctx.node.status()
    return len(datagrams)


async def raw_open(ctx: Any, fields: dict[str, Any]) -> str:
    """Send an open request built by hand on the data channel (no client checks); what the
    node answers: the error type, or "opened"."""
    from logos_p2p import _schema

    channel = ctx.node._channel
    request = next(channel._requests)
    fut = asyncio.get_running_loop().create_future()
    channel._opens[request] = fut
    channel.sock.send(_schema.channel_message(open={"request": request, **fields}))
    try:
        sock, _info = await asyncio.wait_for(fut, 10)
    except Exception as exc:
        return type(exc).__name__
    sock.close()
    return "opened"


async def pause_channel(ctx: Any) -> None:
    """Stop reading the data channel (a module busy elsewhere)."""
    channel = ctx.node._channel
    channel.loop.remove_reader(channel.sock.fileno())


async def resume_channel(ctx: Any) -> None:
    channel = ctx.node._channel
    channel.loop.add_reader(channel.sock.fileno(), channel._on_readable)
    await ctx.node.status()


async def many_calls(ctx: Any, what: str, n: int, *args: Any) -> dict[str, int]:
    """Start ``n`` calls at once (``open``: open_stream(*args); ``dial``: connect_peer(*args);
    ``wait``: the node's waitShutdown); count how each ended within ``ctx.hold`` seconds
    (1 unless set with ``set_hold``), then cancel the rest."""
    node = ctx.node
    if what == "open":
        make = lambda: node.open_stream(*args)  # noqa: E731
    elif what == "dial":
        make = lambda: node.connect_peer(*args)  # noqa: E731
    else:
        make = lambda: node._cap.waitShutdown()  # noqa: E731
    calls = [asyncio.ensure_future(make()) for _ in range(n)]
    done, pending = await asyncio.wait(calls, timeout=getattr(ctx, "hold", 1.0))
    counts: dict[str, int] = {}
    from logos_p2p.client._translate import to_error

    for call in done:
        exc = call.exception()
        name = "ok" if exc is None else type(to_error(exc, False) if what == "wait" else exc).__name__
        counts[name] = counts.get(name, 0) + 1
    for call in pending:
        call.cancel()
    counts["pending"] = len(pending)
    return counts


async def write_expect_error(ctx: Any, key: str, size: int) -> str:
    """Write ``size`` bytes in one call and flush them; the error type, or "written"."""
    stream = ctx.streams[key]
    try:
        await stream.write(b"m" * size)
        await stream._t.flush()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "written"


async def set_hold(ctx: Any, seconds: float) -> None:
    ctx.hold = seconds


# -- request/response and peer events --------------------------------------------------------


async def serve(
    ctx: Any, key: str, protocols: list[str], max_size: int = 1 << 20, timeout: float | None = None
) -> list[str]:
    """Serve requests: b"boom" raises (sync path), b"hang" never answers, b"big:N" answers
    N bytes, anything else is answered b"re:" + request (async path); each request is
    announced as event "request" (its bytes and who sent it)."""

    def boom() -> bytes:
        raise RuntimeError("the responder failed on purpose")

    async def answer(request: bytes, info: Any) -> bytes:
        ctx.emit("request", {"data": request, "peer": info.remote_peer_id, "protocol": info.protocol})
        if request == b"hang":
            await asyncio.Event().wait()
        if request.startswith(b"big:"):
            return pattern(int(request[4:]))
        return b"re:" + request

    def respond(request: bytes, info: Any) -> Any:
        if request == b"boom":
            ctx.emit("request", {"data": request, "peer": info.remote_peer_id, "protocol": info.protocol})
            return boom()
        return answer(request, info)

    reg = await ctx.node.serve(protocols, respond, max_size=max_size, timeout=timeout)
    ctx.registrations[key] = reg
    return list(reg.protocols)


async def request(ctx: Any, peer_id: str, protocols: list[str], data: bytes, options: Any = None) -> bytes:
    reply: bytes = await ctx.node.request(peer_id, protocols, data, **(options or {}))
    return reply


async def requests(ctx: Any, peer_id: str, protocols: list[str], n: int, concurrency: int) -> list[bytes]:
    """``n`` requests, ``concurrency`` at a time; the replies in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bytes:
        async with gate:
            reply: bytes = await ctx.node.request(peer_id, protocols, b"%d" % i)
            return reply

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _event_dict(event: Any) -> dict[str, Any]:
    out = {"kind": type(event).__name__}
    out.update(vars(event))
    return out


async def subscribe(ctx: Any, key: str, queue_size: int = 256) -> None:
    """Subscribe to peer events; each one is announced as event "peer:<key>"."""
    events = ctx.node.peer_events(queue_size)
    await events.start()
    ctx.streams[key] = events

    async def forward() -> None:
        async for event in events:
            ctx.emit(f"peer:{key}", _event_dict(event))

    ctx.tasks[key] = asyncio.ensure_future(forward())


async def subscribe_idle(ctx: Any, key: str, queue_size: int) -> None:
    """Subscribe and take no event until ``drain_events`` is called."""
    events = ctx.node.peer_events(queue_size)
    await events.start()
    ctx.streams[key] = events


async def drain_events(
    ctx: Any, key: str, until_kind: str, count: int, peer_id: str | None = None
) -> list[dict[str, Any]]:
    """Events of an idle subscription until ``count`` events of ``until_kind`` (about
    ``peer_id``, if given) came."""
    events = ctx.streams[key]
    out: list[dict[str, Any]] = []
    seen = 0
    while seen < count:
        event = _event_dict(await events.get(timeout=10))
        out.append(event)
        seen += event["kind"] == until_kind and peer_id in (None, event.get("peer_id"))
    return out


async def unsubscribe(ctx: Any, key: str, how: str) -> None:
    """End a subscription: "close" (aclose) or "drop" (let go of it, collected)."""
    events = ctx.streams.pop(key)
    task = ctx.tasks.pop(key, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        del task  # its CancelledError's traceback holds the events too
    if how == "close":
        await events.aclose()
    else:
        del events
        gc.collect()
