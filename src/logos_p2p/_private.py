"""Files and directories only this user may use: the socket directory, the token, the
TLS key.

Every check is on the path itself, never through a symlink (``lstat``, ``O_NOFOLLOW``):
another user who can create ``/tmp/logos-p2p-$UID`` first, or plant a symlink there to a
directory the victim owns, must not pass. Files are created whole, 0600, under a
temporary name and then linked into place, so no one ever reads half a secret and an
existing file is never overwritten. Plain Python: the client imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
import struct
from collections.abc import Callable, Collection
from pathlib import Path

from .errors import AuthenticationFailed


def _refusal(path: Path, what: str) -> PermissionError:
    return PermissionError(f"{path} {what}: refused (it must be owned by uid {os.getuid()} and private to it)")


def _check(path: Path, info: os.stat_result, is_kind: Callable[[int], bool], kind: str, loose: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _refusal(path, "is a symlink")
    if not is_kind(info.st_mode):
        raise _refusal(path, f"is not {kind}")
    if info.st_uid != os.getuid():
        raise _refusal(path, f"belongs to uid {info.st_uid}")
    if info.st_mode & 0o077:
        raise _refusal(path, f"has mode {stat.S_IMODE(info.st_mode):o}, {loose}")


def check_dir(path: Path) -> None:
    """``path`` is a directory (not a symlink) of this user's that no one else may enter."""
    _check(path, path.lstat(), stat.S_ISDIR, "a directory", "not 700")


def ensure_dir(path: Path) -> None:
    """Create ``path`` (0700) unless it exists, then :func:`check_dir` it."""
    if not os.path.lexists(path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # someone else's, made meanwhile: the check decides
            path.mkdir(mode=0o700)
    check_dir(path)


def read(path: Path) -> bytes:
    """The bytes of a regular file of this user's that no one else may read (not through a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refusal(path, "is a symlink") from None
        raise
    with os.fdopen(fd, "rb") as f:
        _check(path, os.fstat(f.fileno()), stat.S_ISREG, "a regular file", "readable by others (chmod 600)")
        return f.read()


def create(path: Path, data: bytes) -> bool:
    """Write ``data`` to a new 0600 file at ``path``, whole or not at all; False (and
    nothing written) if ``path`` exists already."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)  # never over an existing file, unlike rename
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temp)


NODE_UID_ENV = "LOGOS_P2P_NODE_UID"


def trusted_uids(given: int | None = None) -> set[int]:
    """Whose process a client may take for its node on a unix socket: its own uid, root's,
    and one it names (``node_uid=``, else ``$LOGOS_P2P_NODE_UID``)."""
    uids = {os.getuid(), 0}
    named = given if given is not None else os.environ.get(NODE_UID_ENV)
    if named not in (None, ""):
        uids.add(int(named))
    return uids


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def check_peer(sock: socket.socket, path: str, uids: Collection[int]) -> None:
    """Refuse a unix socket whose listening process does not run as one of ``uids``."""
    uid = peer_credentials(sock)[1]
    if uid not in uids:
        raise AuthenticationFailed(
            f"the process behind {path} runs as uid {uid}, not as this user or root: refused (another "
            f"user's socket in the node's place?); trust that uid with node_uid= or ${NODE_UID_ENV}"
        )
