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

from ..errors import AuthenticationFailed as AuthenticationFailed
from ..errors import Busy as Busy
from ..errors import Cause as Cause
from ..errors import ConnectionLost as ConnectionLost
from ..errors import EndOfStream as EndOfStream
from ..errors import FrameTooLarge as FrameTooLarge
from ..errors import IncompleteRead as IncompleteRead
from ..errors import InvalidArgument as InvalidArgument
from ..errors import LimitExceeded as LimitExceeded
from ..errors import LogosP2PError as LogosP2PError
from ..errors import NegotiationFailed as NegotiationFailed
from ..errors import NodeDisconnected as NodeDisconnected
from ..errors import NodeShutdown as NodeShutdown
from ..errors import NodeUnavailable as NodeUnavailable
from ..errors import OpenStreamError as OpenStreamError
from ..errors import PeerUnreachable as PeerUnreachable
from ..errors import ProtocolInUse as ProtocolInUse
from ..errors import ProtocolNotSupported as ProtocolNotSupported
from ..errors import RPCError as RPCError
from ..errors import StreamClosed as StreamClosed
from ..errors import StreamError as StreamError
from ..errors import StreamReset as StreamReset
from ..errors import StreamTimeout as StreamTimeout
from ..errors import Timeout as Timeout
from ._connect import connect as connect
from ._node import Node as Node
from ._node import NodeInfo as NodeInfo
from ._node import PeerInfo as PeerInfo
from ._node import Registration as Registration
from ._stream import Stream as Stream

__all__ = [
    "AuthenticationFailed",
    "Busy",
    "Cause",
    "ConnectionLost",
    "EndOfStream",
    "FrameTooLarge",
    "IncompleteRead",
    "InvalidArgument",
    "LimitExceeded",
    "LogosP2PError",
    "NegotiationFailed",
    "Node",
    "NodeDisconnected",
    "NodeInfo",
    "NodeShutdown",
    "NodeUnavailable",
    "OpenStreamError",
    "PeerInfo",
    "PeerUnreachable",
    "ProtocolInUse",
    "ProtocolNotSupported",
    "RPCError",
    "Registration",
    "Stream",
    "StreamClosed",
    "StreamError",
    "StreamReset",
    "StreamTimeout",
    "Timeout",
    "connect",
]
