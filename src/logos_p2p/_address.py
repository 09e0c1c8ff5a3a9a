"""RPC endpoint addresses: ``unix:PATH``, ``tcp:HOST:PORT`` or ``tls:HOST:PORT``; and the
default one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgument

ENV_VAR = "LOGOS_P2P_RPC"


@dataclass(frozen=True)
class Address:
    kind: str  # "unix", "tcp" or "tls"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}:{host}:{self.port}"


def default_socket_dir() -> Path:
    """A directory only this user can enter: ``$XDG_RUNTIME_DIR/logos-p2p`` or
    ``/tmp/logos-p2p-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "logos-p2p"
    return Path("/tmp") / f"logos-p2p-{os.getuid()}"


def default_address() -> Address:
    env = os.environ.get(ENV_VAR)
    if env:
        return parse(env)
    return Address("unix", path=str(default_socket_dir() / "node.sock"))


def parse(text: str) -> Address:
    """Parse ``unix:PATH``, ``tcp:HOST:PORT`` (``tcp:[::1]:PORT``), ``tls:HOST:PORT`` or a bare path.

    Port 0 is allowed (a listener picks a free port); connecting needs a real one.
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise InvalidArgument(f"empty unix socket path in {text!r}")
        return Address("unix", path=path)
    kind, colon, rest = text.partition(":")
    if colon and kind in ("tcp", "tls"):
        if rest.startswith("["):
            host, sep, port = rest[1:].partition("]:")
        else:
            host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise InvalidArgument(f"expected {kind}:HOST:PORT, got {text!r}")
        return Address(kind, host=host, port=int(port))
    if text.startswith("/") or text.startswith("."):
        return Address("unix", path=text)
    raise InvalidArgument(f"expected unix:PATH, tcp:HOST:PORT or tls:HOST:PORT, got {text!r}")
