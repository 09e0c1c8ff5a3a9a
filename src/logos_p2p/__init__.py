"""logos-p2p: custom libp2p protocols handled by modules in other processes.

``logos_p2p.client`` is the module-side library (asyncio + pycapnp only);
``logos_p2p.server`` is the node (py-libp2p on trio, Cap'n Proto RPC on
trio-asyncio). Importing this package imports neither.
"""

__version__ = "0.1.0"
