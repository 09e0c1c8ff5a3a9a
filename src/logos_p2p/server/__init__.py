"""The logos-p2p node: a py-libp2p host whose protocols are handled by modules.

Run it with ``logos-p2p serve``, or embed it in a trio program::

    async with trio.open_nursery() as nursery:
        node = await nursery.start(NodeService(NodeConfig(...)).run)
        ...
        await node.shutdown()
"""

from ._config import Limits as Limits
from ._config import NodeConfig as NodeConfig
from ._node import NodeService as NodeService

__all__ = ["Limits", "NodeConfig", "NodeService"]
