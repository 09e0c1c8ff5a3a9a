"""A py-libp2p peer in its own process: opens PROTOCOL on the node, writes, then waits.

Prints "open" once the stream is open; tests SIGKILL it to cut the connection.
"""

import logging
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.peer.peerinfo import info_from_p2p_addr


async def main(addr: str, protocol: str) -> None:
    logging.disable(logging.CRITICAL)
    host = new_host()
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [protocol])
        await stream.write(b"hello")
        print("open", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
