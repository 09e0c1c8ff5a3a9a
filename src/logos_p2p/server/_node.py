"""The node: wiring and running a py-libp2p host, the stream service and its adapters.

:class:`NodeService` runs in trio. It opens the asyncio side first (so that libp2p's
handler tasks can reach it), then the libp2p host, then the RPC endpoint. The parts,
and the direction of every dependency, are in ``docs/architecture.md``:
:mod:`._streams` owns every stream; :mod:`._rpc` and :mod:`._channel` are its adapters;
:mod:`._endpoint` accepts modules; this module only wires them, runs, stops and reports.

Shutdown (:meth:`NodeService.shutdown`) is bounded: tell modules (``waitShutdown``
returns), fail pending control calls with NodeShutdown, reset every stream on the wire
and to its module, unmount every protocol, let the replies flush, close the RPC
connections, then stop libp2p.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields
from functools import partial
from typing import Any

import trio

from .. import __version__
from ..errors import Cause, InvalidArgument, NodeShutdown
from . import _libp2p, _resources
from ._channel_listener import ChannelListener
from ._config import NodeConfig
from ._endpoint import Endpoint
from ._handoff import Calls, Loops, open_loops
from ._peer_events import PeerEvents
from ._resources import ResourceLimits, ResourceManager, derive_limits, descriptor_limit, open_descriptors
from ._rpc import NodeImpl
from ._session import ModuleSession
from ._streams import StreamService

log = logging.getLogger("logos_p2p.node")


class NodeService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.shutting_down = False
        self.shutdown_started = asyncio.Event()
        self.rpc_address = ""
        self.peer_id = ""
        self.addrs: list[str] = []
        self._stop = trio.Event()
        self.calls = Calls()  # control calls in flight, cancelled at shutdown
        self._channels: ChannelListener | None = None
        self._identify_dirty = False
        self._identify_pushing = False
        self.loops: Loops
        self.streams: StreamService
        self.peer_events: PeerEvents
        self.endpoint: Endpoint
        config.resources.check()
        self.rm = ResourceManager(derive_limits(config.resources, descriptor_limit(), open_descriptors()))

    # -- running ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`shutdown`; ``task_status.started(self)`` once ready."""
        _resources.tune_allocator()
        key_pair = _libp2p.load_or_create_identity(self.config.identity)
        self.host = _libp2p.build_host(key_pair, self.config.listen, self.config.muxer, self.rm.limits)
        self.peer_id = str(self.host.get_id())
        async with open_loops() as loops:
            self.loops = loops
            self.streams = StreamService(self.host, self.rm, loops, self.config, self._protocols_changed)
            self.peer_events = PeerEvents(loops)
            self.peer_events.watch_host(self.host)
            self.endpoint = Endpoint(
                self.config, self.streams, lambda session: NodeImpl(self, session), loops.spawn_aio
            )
            reader_bound = self.limits.rx_buffer + self.limits.push_window  # a bridge's inbound bytes
            _libp2p.install_gate(self.host, _libp2p.Gate(self.rm, loops.spawn_trio, reader_bound))
            log.info("limits: %s", _limits_line(self.rm.limits))
            loops.spawn_trio(self._flush_refusal_logs)
            async with _libp2p.run_host(self.host, self.config.listen):
                self.addrs = _libp2p.advertised_addrs(self.host)
                self.rpc_address = await loops.to_aio(self._start_rpc)
                log.info("node %s ready; rpc %s; libp2p %s", self.peer_id, self.rpc_address, self.addrs)
                if self.limits.idle_timeout > 0:
                    loops.spawn_aio(self.streams.expire_idle())
                task_status.started(self)
                await self._stop.wait()
                with trio.move_on_after(0.3):
                    await self.host.close()

    async def _start_rpc(self) -> str:
        self.endpoint.bind()
        if self.endpoint.data_socket is not None:
            sock, path = self.endpoint.data_socket
            channels = self._channels = ChannelListener(self.streams, self.loops, self.config, sock, path)
            self.loops.spawn_trio(channels.serve)
        self.endpoint.start()
        return self.endpoint.address

    @property
    def sessions(self) -> dict[int, ModuleSession]:
        return self.streams.sessions

    def ready_line(self) -> dict[str, Any]:
        line = {"peer_id": self.peer_id, "addrs": self.addrs, "rpc": self.rpc_address}
        if self.endpoint.token_file:
            line["token_file"] = self.endpoint.token_file
        if self.endpoint.tls_fingerprint:
            line["tls_fingerprint"] = self.endpoint.tls_fingerprint
        return line

    async def shutdown(self) -> None:
        """Graceful, bounded shutdown (trio). Idempotent."""
        if self.shutting_down:
            await self._stop.wait()
            return
        self.shutting_down = self.streams.shutting_down = True
        self.calls.close()
        self.peer_events.closing()
        log.info("shutting down")
        with trio.move_on_after(self.config.shutdown_grace) as grace:
            await self.loops.to_aio(self._close_listeners)
            self.shutdown_started.set()
            self.calls.cancel()
            for session in list(self.sessions.values()):
                self.streams.end_session(session, Cause.NODE_SHUTDOWN, "the node is shutting down")
            # Wait for the stream tasks to end and the failed calls to answer. Their
            # counters live in many objects; a short poll, bounded by the grace above.
            while self.tasks:  # noqa: ASYNC110 - counts the guarded calls too
                await trio.sleep(0.01)
            await trio.sleep(0.05)  # a few KJ turns to write the last replies
            if self._channels is not None:
                self._channels.close_channels()
            await self.loops.to_aio(self.endpoint.close_connections)
        if grace.cancelled_caught:
            log.warning(
                "shutdown: %gs grace over with %d tasks still running (streams %s, calls %s)",
                self.config.shutdown_grace,
                self.tasks,
                [b for s in self.sessions.values() for b in s.bridges.values() if b.tasks],
                [t.get_coro() for t in self.calls.tasks],
            )
        self._stop.set()

    async def _close_listeners(self) -> None:
        if self._channels is not None:
            self._channels.close()
        await self.endpoint.close_listener()

    async def _flush_refusal_logs(self) -> None:
        """Log refusals the last flood left unlogged (one line per kind per interval)."""
        while not self.shutting_down:
            await trio.sleep(_resources.LOG_INTERVAL)
            self.rm.flush_logs()

    # -- what the node tells ----------------------------------------------------------------

    @property
    def tasks(self) -> int:
        """Tasks serving streams and calls right now (bridge tasks, hand-overs, opens and
        dials in progress)."""
        return self.streams.tasks + len(self.calls)

    def info(self) -> dict[str, Any]:
        return {"peerId": self.peer_id, "addrs": self.addrs, "version": __version__}

    def status(self) -> dict[str, Any]:
        return {
            "peerId": self.peer_id,
            **self.streams.status(),
            "tasks": self.tasks,
            "subscriptions": len(self.peer_events.subscribers),
            "authFailures": self.endpoint.auth_failures,
            **self.rm.status(),
        }

    def peers(self) -> list[dict[str, Any]]:
        return [{"peerId": p, "addrs": a} for p, a in _libp2p.connected_peers(self.host)]

    # -- control operations (asyncio side, called by the RPC servers) ------------------------------

    async def connect_peer(self, session: ModuleSession, addr: str, timeout: float) -> dict[str, Any]:
        grant = self.streams.begin(session, _resources.DIALS)
        try:
            info = await self.loops.to_trio(partial(_libp2p.connect, self.host, addr, timeout))
        finally:
            grant.release()
        peer = str(info.peer_id)
        addrs = dict(_libp2p.connected_peers(self.host)).get(peer, [])
        return {"peerId": peer, "addrs": addrs}

    async def disconnect_peer(self, peer_id: str) -> None:
        await self.loops.to_trio(partial(_libp2p.disconnect, self.host, peer_id))

    def offer_channel(self, session: ModuleSession) -> tuple[str, bytes]:
        """A data channel token for ``session`` (``Node.dataChannel``)."""
        if self._channels is None:
            raise InvalidArgument("this node offers data channels only on a unix RPC endpoint")
        if self.shutting_down:
            raise NodeShutdown()
        return self._channels.path, self._channels.offer(session)

    def _protocols_changed(self) -> None:
        """Push identify to connected peers; a burst of changes costs one push (plus one)."""
        self._identify_dirty = True
        if not self._identify_pushing and not self.shutting_down:
            self._identify_pushing = True
            self.loops.spawn_trio(self._push_identify)

    async def _push_identify(self) -> None:
        try:
            while self._identify_dirty and not self.shutting_down:
                self._identify_dirty = False
                with trio.move_on_after(5):
                    await _libp2p.push_identify(self.host)
        finally:
            self._identify_pushing = False


def _limits_line(limits: ResourceLimits) -> str:
    return ", ".join(f"{f.name}={getattr(limits, f.name)}" for f in fields(limits))
