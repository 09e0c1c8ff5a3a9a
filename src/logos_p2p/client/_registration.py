"""Registrations, module side: the protocol ids a module mounted and the Handler that
serves their inbound streams.

Each keeps the :class:`~._node.Node` it belongs to (typed loosely here, so that this
file does not import the one that uses it).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

from .. import _schema
from ._translate import translate

schema = _schema.load()

Handler = Callable[[Any], Awaitable[None]]  # handler(stream)


class Registration:
    """Protocol ids mounted on the node for this module, served by one handler."""

    def __init__(self, node: Any, cap: Any, protocols: tuple[str, ...], reg_id: int = 0) -> None:
        self._node = node
        self._cap: Any = cap
        self.protocols = protocols
        self.id = reg_id

    def __repr__(self) -> str:
        return f"<Registration {list(self.protocols)}{'' if self._cap else ' (unregistered)'}>"

    async def unregister(self) -> None:
        """Unmount the protocol ids (idempotent). Streams already open keep working."""
        cap, self._cap = self._cap, None
        if cap is None:
            return
        self._node._registrations.discard(self)
        if self._node._channel is not None:
            self._node._channel.handlers.pop(self.id, None)
        with translate(self._node._is_shutting_down):
            await cap.unregister()


class _HandlerImpl(schema.Handler.Server):  # type: ignore[name-defined,misc]
    def __init__(self, node: Any, fn: Handler) -> None:
        self._node = weakref.ref(node)
        self._fn = fn

    async def handle(self, stream: Any, info: Any, **_: Any) -> Any:
        node = self._node()
        if node is None or node._closed:
            raise RuntimeError("the module is closing")
        s = node._adopt(stream, info)
        node._spawn_handler(self._fn, s)
        return s.sink


class RegisterOptions(TypedDict, total=False):
    """The keyword options of :meth:`Node.register`."""

    share: bool
    accept_timeout: float | None
