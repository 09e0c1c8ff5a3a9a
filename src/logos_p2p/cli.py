"""``logos-p2p``: run a node (``serve``) or ask one what it holds (``status``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import __version__

STATUS_NAME = "logos-p2p status"
# the client keeps up to 1 MiB of writes in flight per stream, in 256 KiB calls
MIN_BUFFER = 1024 * 1024
MIN_WRITE = 256 * 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logos-p2p", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a node until SIGTERM/SIGINT")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="libp2p listen address (repeatable; default /ip4/0.0.0.0/tcp/4001)",
    )
    serve.add_argument(
        "--rpc",
        default="",
        metavar="ADDR",
        help="RPC endpoint: unix:PATH, tls:HOST:PORT (modules on other machines) or tcp:HOST:PORT "
        "(unencrypted) (default: a 0600 unix socket in $XDG_RUNTIME_DIR/logos-p2p or /tmp/logos-p2p-$UID)",
    )
    serve.add_argument("--identity", type=Path, metavar="FILE", help="private key file; created on first run")
    serve.add_argument("--muxer", choices=["yamux", "mplex"], help="preferred stream muxer (default yamux)")
    serve.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="secret a TLS or TCP RPC client must prove it knows (created 0600 if missing; default "
        "<rpc state dir>/rpc-token); unix endpoints are guarded by file permissions instead",
    )
    tls = serve.add_argument_group("TLS endpoint (--rpc tls:HOST:PORT)")
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="the node's certificate, PEM (default: a self-signed one, made once and kept beside "
        "--identity, or in the RPC state dir)",
    )
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key, PEM (default: in --tls-cert)")
    tls.add_argument(
        "--tls-client-certs",
        type=Path,
        metavar="FILE",
        help="admit clients by certificate instead of the token: the PEM certificates admitted",
    )
    limits = serve.add_argument_group("timeouts and limits")
    limits.add_argument("--accept-timeout", type=float, default=10.0, metavar="S", help="Handler answer deadline")
    limits.add_argument(
        "--idle-timeout", type=float, default=300.0, metavar="S", help="reset a stream idle this long (0: never)"
    )
    limits.add_argument("--max-registrations-per-module", type=_positive, default=1024, metavar="N")
    limits.add_argument(
        "--max-stream-buffer",
        type=_positive,
        default=8 * 1024 * 1024,
        metavar="BYTES",
        help="module writes a stream may queue in the node before they fail (LimitExceeded)",
    )
    limits.add_argument(
        "--max-write",
        type=_positive,
        default=1024 * 1024,
        metavar="BYTES",
        help="largest Stream.write/writeLp call a module may make (LimitExceeded beyond)",
    )
    limits.add_argument(
        "--max-rpc-message",
        type=_positive,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest RPC message the node reads (Cap'n Proto's traversal limit): "
        "a module sending a bigger one loses its connection",
    )
    limits.add_argument(
        "--channel-outbox",
        type=_positive,
        default=256,
        metavar="N",
        help="stream announcements that may wait for a module reading its data channel; then new streams are reset",
    )
    resources = serve.add_argument_group(
        "resource limits", "checked before the node takes anything; 0 derives a default at start (see the README)"
    )
    from .server._resources import resource_flags

    for name, flag, unit, default, text in resource_flags():
        shown = "derived" if default == 0 else str(default)
        resources.add_argument(flag, dest=name, type=_count, default=default, metavar=unit, help=f"{text} [{shown}]")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    status = sub.add_parser("status", help="print what a running node holds, as JSON")
    status.add_argument("--rpc", default="", metavar="ADDR", help="the node's RPC endpoint")
    status.add_argument(
        "--token-file", type=Path, metavar="FILE", help="the node's token, for a TLS or TCP endpoint (see serve)"
    )
    status.add_argument("--fingerprint", metavar="SHA256", help="tls: the node's certificate fingerprint")
    status.add_argument("--tls-ca", type=Path, metavar="FILE", help="tls: check the node's certificate with this CA")
    status.add_argument("--tls-cert", type=Path, metavar="FILE", help="tls: this client's certificate, PEM")
    status.add_argument("--tls-key", type=Path, metavar="FILE", help="tls: its key (default: in --tls-cert)")

    info = sub.add_parser(
        "info", help="print what a remote module needs to know of this node (from its files), as JSON"
    )
    info.add_argument("--identity", type=Path, metavar="FILE", help="the node's identity key (see serve)")
    info.add_argument("--tls-cert", type=Path, metavar="FILE", help="the node's certificate (see serve)")
    info.add_argument("--token-file", type=Path, metavar="FILE", help="the node's token file (see serve)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number: {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "info":
        return _info(args)
    return _status(args)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from . import _address
    from .errors import InvalidArgument, LogosP2PError
    from .server import NodeConfig, NodeService, _debug
    from .server._config import Limits
    from .server._libp2p import parse_addr, quiet_libp2p_logs
    from .server._resources import ResourceLimits

    try:  # bad arguments fail before anything starts
        kind = _address.parse(args.rpc).kind if args.rpc else "unix"
        if kind != "tls" and (args.tls_cert or args.tls_key or args.tls_client_certs):
            raise InvalidArgument("--tls-cert, --tls-key and --tls-client-certs need --rpc tls:HOST:PORT")
        for addr in args.listen or ():
            parse_addr(addr)
    except LogosP2PError as exc:
        print(f"logos-p2p serve: {exc}", file=sys.stderr)
        return 2
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libp2p_logs(level)
    problem = ""
    if args.idle_timeout < 0 or args.accept_timeout <= 0:
        problem = "timeouts must be positive (--idle-timeout 0 turns it off)"
    elif min(args.max_stream_buffer, args.max_rpc_message) < MIN_BUFFER:
        problem = f"--max-stream-buffer and --max-rpc-message must be at least {MIN_BUFFER} bytes"
    elif not MIN_WRITE <= args.max_write <= min(args.max_stream_buffer, args.max_rpc_message // 2):
        problem = f"--max-write must be in {MIN_WRITE}..min(--max-stream-buffer, --max-rpc-message / 2)"
    resources = ResourceLimits(**{f.name: getattr(args, f.name) for f in fields(ResourceLimits)})
    if not problem:
        try:
            resources.check()
        except ValueError as exc:
            problem = str(exc)
    if problem:
        print(f"logos-p2p serve: {problem}", file=sys.stderr)
        return 2
    config = NodeConfig(
        rpc=args.rpc,
        identity=args.identity,
        muxer=args.muxer,
        accept_timeout=args.accept_timeout,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_certs=args.tls_client_certs,
        max_registrations_per_module=args.max_registrations_per_module,
        rpc_traversal_limit_words=args.max_rpc_message // 8,
        channel_outbox=args.channel_outbox,
        limits=Limits(idle_timeout=args.idle_timeout, tx_hard_limit=args.max_stream_buffer, max_write=args.max_write),
        resources=resources,
    )
    if args.listen:
        config.listen = args.listen

    async def run() -> None:
        node = NodeService(config)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                _debug.install(node)  # kill -USR1: a snapshot of the node in its log
                print(json.dumps(node.ready_line()), flush=True)
                async for _ in signals:
                    break
                await node.shutdown()
                # libp2p's own teardown may linger; bound it.
                nursery.cancel_scope.deadline = trio.current_time() + 0.5

    try:
        trio.run(run)
    except KeyboardInterrupt:  # a second signal during shutdown
        return 130
    except Exception as exc:
        logging.getLogger("logos_p2p.node").error("the node stopped: %s", _leaf(exc), exc_info=level <= logging.DEBUG)
        return 1
    return 0


def _leaf(exc: BaseException) -> str:
    """The first real error inside trio's exception groups, as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _status(args: argparse.Namespace) -> int:
    import asyncio

    from .client import connect

    token = args.token_file.read_text() if args.token_file else None
    tls = {"fingerprint": args.fingerprint, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}

    async def run() -> Any:
        async with connect(args.rpc or None, name=STATUS_NAME, token=token, **tls) as node:
            status = await node.status()
        status["modules"] = [m for m in status["modules"] if m["name"] != STATUS_NAME]  # not ourselves
        return status

    from .errors import LogosP2PError

    try:
        status = asyncio.run(run())
    except (LogosP2PError, OSError) as exc:
        print(f"logos-p2p status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    """What a module on another machine needs (peer id, the certificate to pin, where the
    token is), read from the node's files: no running node, no RPC."""
    from . import _address, _auth, _tls

    state = args.identity.parent if args.identity else _address.default_socket_dir()
    cert = args.tls_cert or state / _tls.CERT_NAME
    token = args.token_file or _auth.default_token_file()
    out: dict[str, Any] = {}
    try:
        if args.identity:
            from .server._libp2p import peer_id_of_identity

            out["peer_id"] = peer_id_of_identity(args.identity)
        if cert.exists():
            out["tls_fingerprint"] = _tls.file_fingerprint(cert)
            out["tls_cert"] = str(cert)
        if token.exists():
            out["token_file"] = str(token)
    except (OSError, ValueError) as exc:
        print(f"logos-p2p info: {exc}", file=sys.stderr)
        return 1
    if not out:
        print(f"logos-p2p info: no identity, certificate or token found (looked in {state})", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
