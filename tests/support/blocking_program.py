"""A module with no asyncio in it: the blocking client only, as a Qt or CLI host would use it.

    blocking_program.py --rpc RPC --peer PEER_ID --addr MULTIADDR

Serves ``/bprog/echo/1.0.0`` (echo) and ``/bprog/hold/1.0.0`` (answers ``held`` to the first
bytes, then reads until the stream ends), opens a stream to PEER's ``/test/echo/1.0.0``
and checks the bytes that come back, resets a second stream, then prints one JSON line
``{"ready": ...}`` and serves until a line arrives on stdin. Then it closes the node and
prints ``{"threads_before": N, "threads_after": M, ...}``: the threads before ``connect``
and after ``close``. Exit status 0 if every check held.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading

from logos_p2p.client.blocking import Stream, connect

ECHO, HOLD, REMOTE_ECHO = "/bprog/echo/1.0.0", "/bprog/hold/1.0.0", "/test/echo/1.0.0"


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def echo(stream: Stream) -> None:
    for chunk in stream:
        stream.write(chunk)


def hold(stream: Stream) -> None:
    stream.read()
    stream.write(b"held")
    while stream.read():
        pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpc", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--addr", required=True)
    args = parser.parse_args()

    threads_before = sorted(t.name for t in threading.enumerate())
    payload = os.urandom(200_000)
    with connect(args.rpc, name="blocking-program") as node, node.handle([ECHO], echo), node.handle([HOLD], hold):
        with node.open_stream(args.peer, [REMOTE_ECHO], addrs=[args.addr], timeout=10) as stream:
            stream.write(payload)
            stream.close_write()
            back = stream.read_all(timeout=10)
        doomed = node.open_stream(args.peer, [REMOTE_ECHO], addrs=[args.addr], timeout=10)
        doomed.write(b"doomed")
        echoed = doomed.read_exactly(6, timeout=10)  # the peer's handler is in its loop
        doomed.reset()
        say(
            ready=True,
            pid=os.getpid(),
            peer_id=node.info().peer_id,
            sent=hashlib.sha256(payload).hexdigest(),
            back=hashlib.sha256(back).hexdigest(),
            doomed_echo=echoed.decode(),
            doomed_state=doomed.state.name,
            loop_threads=[t.name for t in threading.enumerate() if t.name.startswith("logos-p2p-loop")],
        )
        sys.stdin.readline()
    threads_after = sorted(t.name for t in threading.enumerate())
    say(threads_before=threads_before, threads_after=threads_after)
    ok = back == payload and echoed == b"doomed" and threads_before == threads_after
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
