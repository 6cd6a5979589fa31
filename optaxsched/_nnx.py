"""Flax ``nnx.Variable`` boxes, read and written without importing flax.

An nnx Variable can only exist once ``flax.nnx`` has been imported, so the
module is looked up in ``sys.modules``: code that never uses nnx never pays
for importing flax.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["nnx_module", "is_variable", "unbox", "set_value"]


def nnx_module() -> Any:
    """``flax.nnx`` if it has been imported, else None."""
    return sys.modules.get("flax.nnx")


def is_variable(x: Any) -> bool:
    nnx = nnx_module()
    return nnx is not None and isinstance(x, nnx.Variable)


def unbox(x: Any) -> Any:
    """The value of an nnx Variable; anything else unchanged."""
    if not is_variable(x):
        return x
    # get_value() replaces `.value`, deprecated in recent flax releases.
    return x.get_value() if hasattr(x, "get_value") else x.value


def set_value(var: Any, value: Any) -> None:
    """Writes ``value`` into the nnx Variable ``var`` in place."""
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:  # flax releases before get_value/set_value
        var.value = value
