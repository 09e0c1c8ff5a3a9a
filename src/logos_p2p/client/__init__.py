"""logos-p2p client: handle custom libp2p protocols from a module process.

Needs only pycapnp and asyncio (works under trio through trio-asyncio)::

    from logos_p2p.client import connect

    async with connect("unix:/run/user/1000/logos-p2p/node.sock") as node:
        async def echo(stream):
            async for chunk in stream:
                await stream.write(chunk)

        async with node.handle(["/echo/1.0.0"], echo):
            ...
"""

from ..errors import *  # noqa: F403 - the whole error family, as errors.__all__ names it
from ..errors import __all__ as _errors
from ._connect import connect as connect
from ._events import PeerConnected as PeerConnected
from ._events import PeerDisconnected as PeerDisconnected
from ._events import PeerEvent as PeerEvent
from ._events import PeerEvents as PeerEvents
from ._events import PeerEventsOverflowed as PeerEventsOverflowed
from ._events import PeerIdentified as PeerIdentified
from ._node import Node as Node
from ._node import NodeInfo as NodeInfo
from ._node import PeerInfo as PeerInfo
from ._registration import Registration as Registration
from ._stream import Stream as Stream
from ._unary import RequestInfo as RequestInfo

__all__ = [
    *_errors,
    "Node",
    "NodeInfo",
    "PeerConnected",
    "PeerDisconnected",
    "PeerEvent",
    "PeerEvents",
    "PeerEventsOverflowed",
    "PeerIdentified",
    "PeerInfo",
    "Registration",
    "RequestInfo",
    "Stream",
    "connect",
]
