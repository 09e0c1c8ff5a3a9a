"""Bench targets, each run as its own process.

    python bench/_targets.py direct        a py-libp2p host with an in-process echo handler
    python bench/_targets.py module RPC [PATH]    an echo module for a logos-p2p node (client library only)

Both print one JSON line when ready and run until killed.
"""

from __future__ import annotations

import json
import sys


def direct() -> None:
    import logging

    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.network.stream.exceptions import StreamEOF

    logging.disable(logging.CRITICAL)

    async def echo(stream) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                data = await stream.read(65536)
                if not data:
                    break
                await stream.write(data)
        except StreamEOF:
            pass
        await stream.close()

    async def main() -> None:
        host = new_host()
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            host.set_stream_handler("/echo/1.0.0", echo)
            print(json.dumps({"addr": str(host.get_addrs()[0])}), flush=True)
            await trio.sleep_forever()

    trio.run(main)


def module(rpc: str, data_path: str = "auto") -> None:
    import asyncio

    from logos_p2p.client import Stream, connect

    async def echo(stream: Stream) -> None:
        async for chunk in stream:
            await stream.write(chunk)

    def answer(request: bytes, info: object) -> bytes:
        return request

    async def main() -> None:
        # share=True: several module processes may serve the protocol (round-robin)
        async with (
            connect(rpc, name="bench-echo", data_path=data_path) as node,
            node.handle(["/echo/1.0.0"], echo, share=True),
        ):
            serves = hasattr(node, "serve")  # not in an older checkout (--baseline)
            if serves:
                registration = await node.serve(["/rr/1.0.0"], answer, share=True)  # noqa: F841 - kept
            print(json.dumps({"ready": True, "serves": serves}), flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1] == "direct":
        direct()
    else:
        module(*sys.argv[2:4])
