"""Small helpers shared by the kinds."""
from __future__ import annotations

import numpy as np
from onnx import helper


class Unsupported(Exception):
    """The kind cannot handle this node; propagation falls back and warns."""


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def has_positions(rank) -> bool:
    """Tensors of rank >= 3 have position axes (spatial or sequence) beside batch and channel."""
    return rank is not None and rank >= 3


def signal_inputs(node, ctx):
    return [name for name in node.input if name and ctx.is_signal(name)]


def finite(*xs) -> bool:
    return all(np.isfinite(x) for x in xs)
