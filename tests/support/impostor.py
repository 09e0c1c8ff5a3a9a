"""Another user listening in the node's place: a unix socket served by ``nobody``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

NOBODY = 65534
IMPOSTOR = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
print("ready", flush=True)
while True:
    conn, _ = s.accept()  # takes connections, as a node would, and keeps them
"""
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="runs a process as another user (nobody): needs root")


@asynccontextmanager
async def impostor_socket() -> AsyncIterator[Path]:
    """A socket in a directory ``nobody`` made first, listened on by a process of ``nobody``'s
    (killed by its PID afterwards)."""
    squat = Path(tempfile.mkdtemp(prefix="logos-p2p-squat-", dir="/tmp"))
    os.chown(squat, NOBODY, NOBODY)
    path = squat / "node.sock"
    python = "/usr/bin/python3"  # the system's: nobody may not enter this checkout's virtualenv
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} for the impostor")
    proc = await trio.lowlevel.open_process(
        [python, "-I", "-c", IMPOSTOR, str(path)], user=NOBODY, group=NOBODY, stdout=subprocess.PIPE, cwd="/"
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(10):
            assert await proc.stdout.receive_some(6) == b"ready\n"
        yield path
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(squat, ignore_errors=True)
