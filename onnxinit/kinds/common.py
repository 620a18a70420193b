"""Small helpers shared by the kinds."""
from __future__ import annotations

from onnx import helper


class Unsupported(Exception):
    """The kind cannot handle this node; propagation falls back and warns."""


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def signal_inputs(node, ctx):
    return [name for name in node.input if name and ctx.is_signal(name)]
