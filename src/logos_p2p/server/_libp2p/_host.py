"""The host: identity, building and running it, addresses, dialing, opening streams,
identify, and the errors of each translated into the logos-p2p family."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.identity_utils import load_identity, save_identity
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from ...errors import InvalidArgument, LimitExceeded, NegotiationFailed, PeerUnreachable, ProtocolNotSupported, Timeout
from .. import _resources as res
from ._fixes import _STREAM_GONE, install_fixes
from ._gate import Refused
from ._io import INetStream, _endpoint_maddr, parse_addr, parse_peer_addr, peer_id_of

log = logging.getLogger("logos_p2p.node")

# -- host ----------------------------------------------------------------------------------------


def peer_id_of_identity(path: Path) -> str:
    """The peer id of the identity key in ``path``."""
    return str(ID.from_pubkey(load_identity(path).public_key))


def load_or_create_identity(path: Path | None) -> KeyPair:
    """The node's key pair: loaded from ``path``, created there (0600) on first run."""
    if path is None:
        return create_new_key_pair()
    if path.exists():
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pair = create_new_key_pair()
    save_identity(key_pair, path)
    os.chmod(path, 0o600)
    return key_pair


def build_host(
    key_pair: KeyPair, listen: Sequence[str], muxer: str | None = None, limits: res.ResourceLimits | None = None
) -> IHost:
    """A py-libp2p host with its default secure channels and muxers (yamux first).

    With ``limits``, py-libp2p's own connection caps are set above the node's (the
    Gate decides), and it keeps no minimum of connections of its own to dial.
    """
    install_fixes()
    listen_addrs = [parse_addr(a) for a in listen]
    kwargs: dict[str, Any] = {"key_pair": key_pair, "listen_addrs": listen_addrs}
    if muxer:
        kwargs["muxer_preference"] = muxer.upper()
    if limits is not None:
        kwargs["connection_config"] = ConnectionConfig(
            max_connections=2 * limits.connections + 1,
            max_connections_per_peer=2 * limits.connections_per_peer + 1,
            min_connections=0,
            low_watermark=0,
            high_watermark=2 * limits.connections + 1,
        )
    return new_host(**kwargs)


@contextlib.asynccontextmanager
async def run_host(host: IHost, listen: Sequence[str]) -> AsyncIterator[None]:
    async with host.run([parse_addr(a) for a in listen]):
        yield


def advertised_addrs(host: IHost) -> list[str]:
    """Dialable addresses: wildcard listen addresses expand to interface addresses."""
    peer = str(host.get_id())
    out: list[str] = []
    for addr in host.get_transport_addrs():
        text = str(addr)
        parts = text.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] in ("0.0.0.0", "::"):
            for ip in _interface_ips(parts[1]):
                out.append("/".join([*parts[:2], ip, *parts[3:]]) + f"/p2p/{peer}")
        else:
            out.append(f"{text}/p2p/{peer}")
    return out


def _interface_ips(family: str) -> list[str]:
    try:
        import ifaddr
    except ImportError:  # pragma: no cover - ifaddr comes with py-libp2p
        return ["127.0.0.1"] if family == "ip4" else ["::1"]
    ips: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if family == "ip4" and isinstance(ip.ip, str):
                ips.append(ip.ip)
            elif family == "ip6" and isinstance(ip.ip, tuple) and not ip.ip[0].startswith("fe80"):
                ips.append(ip.ip[0])
    return ips or (["127.0.0.1"] if family == "ip4" else ["::1"])


def _limit_in(exc: BaseException) -> LimitExceeded | None:
    """The node's own refusal (or the kernel's lack of descriptors) behind a dial error."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, Refused):
            return chain.error
        if isinstance(chain, OSError) and chain.errno in res.RESOURCE_ERRNOS:
            return LimitExceeded(f"the system has no resources for another connection: {chain.strerror}")
        chain = chain.__cause__ or chain.__context__
    return None


async def connect(host: IHost, addr: str, timeout: float) -> PeerInfo:
    info = parse_peer_addr(addr)
    if info.peer_id == host.get_id():
        raise InvalidArgument("cannot connect to the node itself")
    try:
        with trio.fail_after(timeout):
            await host.connect(info)
    except trio.TooSlowError as exc:
        raise Timeout(f"dialing {addr} took longer than {timeout:g}s") from exc
    except (SwarmException, *_STREAM_GONE) as exc:
        limit = _limit_in(exc)
        if limit is not None:
            raise limit from exc
        raise PeerUnreachable(f"cannot connect to {addr}: {exc}") from exc
    return info


async def open_stream(
    host: IHost, peer: str, protocols: Sequence[str], addrs: Sequence[str], timeout: float
) -> INetStream:
    """A negotiated outbound stream; raises PeerUnreachable, ProtocolNotSupported or Timeout."""
    peer_id = peer_id_of(peer)
    if peer_id == host.get_id():
        raise InvalidArgument("cannot open a stream to the node itself")
    if addrs:
        host.get_peerstore().add_addrs(peer_id, [_transport_part(a, peer_id) for a in addrs], 600)
    try:
        with trio.fail_after(timeout):
            return await host.new_stream(peer_id, [TProtocol(p) for p in protocols])
    except trio.TooSlowError as exc:
        raise Timeout(f"opening {list(protocols)} on {peer} took longer than {timeout:g}s") from exc
    except Exception as exc:
        chain: BaseException | None = exc
        while chain is not None:
            if isinstance(chain, MultiselectClientError):
                # py-libp2p says "protocols not supported" only when every id got "na"
                text = str(chain)
                if "not supported" in text:
                    raise ProtocolNotSupported(f"{peer} supports none of {list(protocols)}") from exc
                if "timed out" in text:
                    raise Timeout(f"{peer} did not finish negotiating {list(protocols)}") from exc
                raise NegotiationFailed(f"negotiating {list(protocols)} with {peer} broke off: {text}") from exc
            chain = chain.__cause__
        limit = _limit_in(exc)
        if limit is not None:
            raise limit from exc
        if isinstance(exc, (SwarmException, *_STREAM_GONE)):
            raise PeerUnreachable(f"cannot reach {peer}: {exc}") from exc
        raise


def _transport_part(text: str, peer_id: ID) -> multiaddr.Multiaddr:
    """``addr`` without a trailing ``/p2p/<id>``, which must then name ``peer_id``."""
    addr = parse_addr(text)
    if "/p2p/" in text:
        info = parse_peer_addr(text)
        if info.peer_id != peer_id:
            raise InvalidArgument(f"{text} names another peer than {peer_id}")
        addr = info.addrs[0]
    return addr


def connected_peers(host: IHost) -> list[tuple[str, list[str]]]:
    out = []
    network = host.get_network()
    for peer_id, conns in list(network.connections.items()):
        addrs = [_endpoint_maddr(getattr(conn.muxed_conn, "get_remote_address", None)) for conn in conns]
        out.append((str(peer_id), [a for a in addrs if a]))
    return out


async def push_identify(host: IHost) -> None:
    """Tell connected peers our current protocols (identify/push), so they stop
    assuming a protocol we unmounted (go-libp2p negotiates lazily when it
    believes a peer supports a protocol)."""
    from libp2p.identity.identify_push.identify_push import push_identify_to_peers

    with contextlib.suppress(Exception):
        await push_identify_to_peers(host)


async def disconnect(host: IHost, peer: str) -> None:
    await host.disconnect(peer_id_of(peer))


def quiet_libp2p_logs(level: int) -> None:
    """py-libp2p logs expected events (a refused protocol) as errors; keep them below ours."""
    logging.getLogger("libp2p").setLevel(max(level, logging.CRITICAL) if level > logging.DEBUG else level)
