"""One task at a time: a guard that raises :class:`~logos_p2p.errors.Busy` for the second.

Like trio's ``ConflictDetector``: concurrent reads of one stream (or writes) are a bug
in the caller, reported at once instead of interleaving bytes.
"""

from __future__ import annotations

from types import TracebackType

from .errors import Busy


class Exclusive:
    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def __enter__(self) -> None:
        if self._busy:
            raise Busy(self._message)
        self._busy = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._busy = False
