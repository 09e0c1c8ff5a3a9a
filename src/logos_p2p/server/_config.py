"""What the node is told at start, and what it says about one stream.

:class:`NodeConfig` is everything ``logos-p2p serve`` takes (the resource limits are
:class:`~._resources.ResourceLimits`); :class:`Limits` the bounds and timeouts of one
bridged stream; :class:`StreamInfo` what a module learns about a stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._resources import ResourceLimits


@dataclass
class Limits:
    """Per-stream bounds and timeouts (see ``NodeConfig`` for the CLI)."""

    rx_buffer: int = 256 * 1024  # bytes from the peer held for the module
    tx_buffer: int = 256 * 1024  # queued module writes before write() waits
    tx_hard_limit: int = 8 * 1024 * 1024  # queued bytes beyond which writes fail
    push_window: int = 256 * 1024  # pushed to the module's sink, not yet answered
    max_push: int = 256 * 1024  # bytes in one push
    read_chunk: int = 256 * 1024  # bytes asked of libp2p at a time
    max_read: int = 1024 * 1024  # largest answer to a pull read
    max_write: int = 1024 * 1024  # largest write/writeLp call (the client library sends 256 KiB)
    max_frame: int = 16 * 1024 * 1024  # largest readLp frame
    write_batch: int = 256 * 1024  # queued writes coalesced into one libp2p write
    close_linger: float = 10.0  # after close(): wait for the peer's half-close
    idle_timeout: float = 300.0  # no byte either way for this long: reset (0 = never), as nim-libp2p


@dataclass
class NodeConfig:
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    rpc: str = ""  # "" = the default unix socket
    token_file: Path | None = None  # TCP and TLS RPC only; default: <default socket dir>/rpc-token
    tls_cert: Path | None = None  # TLS RPC: the node's certificate (default: self-signed, kept)
    tls_key: Path | None = None  # its key (default: in the certificate's file)
    tls_client_certs: Path | None = None  # TLS RPC: admit clients by these certificates instead of the token
    identity: Path | None = None
    muxer: str | None = None  # "yamux" or "mplex" first; default: yamux
    accept_timeout: float = 10.0  # Handler.handle must answer within this
    open_timeout: float = 30.0  # openStream default
    dial_timeout: float = 30.0  # connectPeer default
    max_registrations_per_module: int = 1024
    rpc_traversal_limit_words: int = 8 * 1024 * 1024  # 64 MiB per RPC message
    shutdown_grace: float = 1.5  # seconds for the whole graceful part of shutdown
    channel_outbox: int = 256  # stream announcements that may wait for a module reading its data channel
    limits: Limits = field(default_factory=Limits)
    resources: ResourceLimits = field(default_factory=ResourceLimits)


@dataclass(frozen=True)
class StreamInfo:
    id: int
    protocol: str
    remote_peer_id: str
    remote_addr: str
    direction: str  # "inbound" | "outbound"

    def to_capnp(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "protocol": self.protocol,
            "remotePeerId": self.remote_peer_id,
            "remoteAddr": self.remote_addr,
            "direction": self.direction,
        }
