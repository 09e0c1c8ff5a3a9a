"""``logos-p2p``: run a node (``serve``) or ask one what it holds (``status``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__

STATUS_NAME = "logos-p2p status"


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
        help="RPC endpoint: unix:PATH or tcp:HOST:PORT (default: a 0600 unix socket in "
        "$XDG_RUNTIME_DIR/logos-p2p or /tmp/logos-p2p-$UID)",
    )
    serve.add_argument("--identity", type=Path, metavar="FILE", help="private key file; created on first run")
    serve.add_argument("--muxer", choices=["yamux", "mplex"], help="preferred stream muxer (default yamux)")
    serve.add_argument("--accept-timeout", type=float, default=10.0, metavar="S", help="Handler answer deadline")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    status = sub.add_parser("status", help="print what a running node holds, as JSON")
    status.add_argument("--rpc", default="", metavar="ADDR", help="the node's RPC endpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _status(args)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from . import _address
    from .errors import LogosP2PError
    from .server import NodeConfig, NodeService
    from .server._libp2p import parse_addr, quiet_libp2p_logs

    try:  # bad arguments fail before anything starts
        if args.rpc:
            _address.parse(args.rpc)
        for addr in args.listen or ():
            parse_addr(addr)
    except LogosP2PError as exc:
        print(f"logos-p2p serve: {exc}", file=sys.stderr)
        return 2
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libp2p_logs(level)
    config = NodeConfig(rpc=args.rpc, identity=args.identity, muxer=args.muxer, accept_timeout=args.accept_timeout)
    if args.listen:
        config.listen = args.listen

    async def run() -> None:
        node = NodeService(config)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
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

    async def run() -> Any:
        async with connect(args.rpc or None, name=STATUS_NAME) as node:
            status = await node.status()
        status["modules"] = [m for m in status["modules"] if m["name"] != STATUS_NAME]  # not ourselves
        return status

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
