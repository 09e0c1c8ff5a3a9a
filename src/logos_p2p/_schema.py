"""Loads the Cap'n Proto contract (``schema/logos_p2p.capnp``).

Wheels carry the file as ``logos_p2p/schema/logos_p2p.capnp``; a source tree
or editable install reads it from the repository's ``schema/`` directory.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import capnp

SCHEMA_NAME = "logos_p2p.capnp"


def schema_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema" / SCHEMA_NAME, here.parents[1] / "schema" / SCHEMA_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SCHEMA_NAME} is neither in the package nor in the source tree")


@functools.cache
def load() -> Any:
    # "/capnp/c++.capnp" resolves against the directory holding pycapnp's package.
    include = os.path.dirname(os.path.dirname(capnp.__file__))
    return capnp.load(str(schema_path()), imports=[include])


def channel_message(**fields: Any) -> bytes:
    """One serialised ``ChannelMessage`` (the local data channel's frames).

    Filled field by field: pycapnp's dict initialiser is several times slower, and
    the node sends one of these per stream.
    """
    msg = load().ChannelMessage.new_message()
    _fill(msg, fields)
    return bytes(msg.to_bytes())


def _fill(builder: Any, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if isinstance(value, dict):
            _fill(builder.init(name), value)
        elif isinstance(value, list):
            items = builder.init(name, len(value))
            for i, item in enumerate(value):
                items[i] = item
        else:
            setattr(builder, name, value)
