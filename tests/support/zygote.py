"""Test nodes forked from one process that imported the node already.

A node's start is 0.8 s here, 0.6 s of it py-libp2p's import; the suite starts ~560
nodes. The zygote imports ``logos_p2p.cli`` and the server once, then forks one child per
node: the child takes the test's environment, working directory, descriptor limit,
stdout pipe and log file, and runs ``logos-p2p serve ARGS`` as ``python -m logos_p2p``
would (``cli.main``). The zygote reaps its children and tells each requester the exit
status, so a :class:`Child` answers ``poll``/``wait``/``returncode`` like a Popen.

Set ``LOGOS_P2P_TEST_ZYGOTE=0`` to start every node with its own interpreter instead
(the node's entry point is run that way by test_cli's ``run_cli`` in any case).
"""

from __future__ import annotations

import array
import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent.parent
ENABLED = os.environ.get("LOGOS_P2P_TEST_ZYGOTE", "1") != "0"


class Child:
    """A node forked by the zygote, as much of ``subprocess.Popen`` as the tests use."""

    def __init__(self, pid: int, stdout: IO[bytes], status: socket.socket) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._status = status  # the zygote writes the exit status here, then closes it
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"node {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _collect(self, timeout: float | None) -> int | None:
        with self._lock:
            if self.returncode is None:
                ready, _, _ = select.select([self._status], [], [], timeout)
                if ready:
                    line = self._status.makefile("rb").readline()
                    self.returncode = int(line.split()[1]) if line.startswith(b"exit ") else -signal.SIGKILL
                    self._status.close()
            return self.returncode


class Zygote:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="logos-p2p-zygote-")
        self.path = os.path.join(self.dir, "zygote.sock")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.zygote", self.path],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=str(ROOT),
            env=env,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError("the node zygote did not start")
        atexit.register(self.close)

    def spawn(self, argv: list[str], log: IO[bytes], nofile: int | None) -> Child:
        read_end, write_end = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "nofile": nofile}
            fds = array.array("i", [write_end, log.fileno()])
            conn.sendmsg([json.dumps(request).encode() + b"\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            line = conn.makefile("rb").readline()
        except BaseException:
            conn.close()
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child's now: its exit closes the pipe
        if not line.startswith(b"pid "):
            conn.close()
            os.close(read_end)
            raise RuntimeError(f"the node zygote could not fork: {line!r}")
        return Child(int(line.split()[1]), os.fdopen(read_end, "rb", buffering=0), conn)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)


def _die_with_parent() -> None:
    """In the zygote: SIGKILL it when the test process dies, however it dies (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


_zygote: Zygote | None = None


def close_zygote() -> None:
    """Kill this test process's zygote by its PID (the nodes it forked are the tests')."""
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


def zygote() -> Zygote | None:
    """The zygote of this test process (started on first use); None if disabled."""
    global _zygote
    if not ENABLED:
        return None
    if _zygote is None or _zygote.proc.poll() is not None:
        _zygote = Zygote()
    return _zygote


# -- the zygote process -------------------------------------------------------------------------------


def _serve(path: str) -> None:
    import resource

    import logos_p2p.cli as cli
    import logos_p2p.server  # noqa: F401 - imported once, here, for every child

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        try:
            ready, _, _ = select.select([listener, wake_read], [], [])
        except InterruptedError:
            continue
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(children)
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 2)
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:  # the node
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                listener.close()
                conn.close()
                os.close(wake_read)
                os.close(wake_write)
                for child_conn in children.values():
                    child_conn.close()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                for fd in (devnull, *fds):
                    os.close(fd)
                if request["nofile"] is not None:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"]))
                os.environ.clear()
                os.environ.update(request["env"])
                os.chdir(request["cwd"])
                sys.argv = ["logos-p2p", *request["argv"]]
                code = cli.main(request["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
            os._exit(code or 0)
        for fd in fds:
            os.close(fd)
        children[pid] = conn
        with contextlib.suppress(OSError):
            conn.sendall(f"pid {pid}\n".encode())
        _reap(children)


def _reap(children: dict[int, Any]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {code}\n".encode())
            conn.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
