"""Small helpers shared by the kinds."""
from __future__ import annotations

from onnx import helper


class Unsupported(Exception):
    """The kind cannot handle this node; propagation falls back and warns."""


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def signal_inputs(node, ctx):
    return [name for name in node.input if name and ctx.is_signal(name)]


def softmax_on_last_axis(node, ctx) -> bool:
    """A default-domain Softmax over its input's last axis (the axis default changed at opset 13)."""
    if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
        return False
    rank = ctx.rank(node.input[0])
    default = -1 if ctx.graph.opsets.get("", 1) >= 13 else 1
    return rank is not None and int(attributes(node).get("axis", default)) % rank == rank - 1
