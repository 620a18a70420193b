"""The weight tensors of a graph and the roles they play, found from the graph alone.

Schemes that do not need signal statistics (the classic ones, LSUV, export)
use this static view: every weighted layer of the rule table (its weight, its
bias, its layout and the nonlinearity that follows it), every normalization
layer's scale and shift, every embedding table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph
from .kinds.common import attributes
from .layouts import Layout
from .rules import RuleTable

# Ops a layer's output may pass through before its nonlinearity without changing which one it is.
TRANSPARENT = {"BatchNormalization", "InstanceNormalization", "GroupNormalization", "LayerNormalization",
               "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "MaxPool",
               "AveragePool", "Cast"}
NORMALIZATION_PARAMS = {"BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
                        "GroupNormalization": (1, 2), "LayerNormalization": (1, 2)}
RUNNING_STATS = {"BatchNormalization": (3, 4)}


@dataclass(frozen=True)
class StaticLayer:
    node: object            # the weighted NodeProto
    weight: str
    bias: str | None        # the layer's own bias input, or the constant of the Add right after a MatMul
    layout: Layout
    nonlinearity: tuple     # (op type, attributes dict) of the activation that follows, or ("", {})

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def torch_shape(self) -> tuple:
        """The weight's shape in PyTorch's layout: conv kernels as stored, dense weights (out, in)."""
        if self.layout.kind in ("conv", "conv_transpose"):
            return tuple(self.layout.shape)
        out, fan, _ = self.layout.canonical_shape
        groups = self.layout.group_count
        return (out // groups, fan) if groups > 1 else (out, fan)

    @property
    def torch_fans(self) -> tuple:
        """(fan_in, fan_out) as torch.nn.init computes them from ``torch_shape``:
        fan_in = size(1) * receptive field, fan_out = size(0) * receptive field."""
        shape = self.torch_shape
        receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
        return shape[1] * receptive, shape[0] * receptive


def _weight_input(node, rule, graph: Graph):
    """(weight name, index) of a weighted node whose other operand is not a constant; else None."""
    spec = rule.get("weight", 1)
    candidates = range(min(len(node.input), 2)) if spec == "any" else [int(spec)]
    for i in candidates:
        if i < len(node.input) and node.input[i] and graph.is_weight(node.input[i]):
            others = [n for j, n in enumerate(node.input[:2]) if j != i and n]
            if others and not graph.is_constant(others[0]):
                return node.input[i], i
    return None


def _shape(graph: Graph, name: str) -> tuple:
    known = graph.weight_shape(name)
    return known[0] if known is not None else ()


def _following_bias(node, out_units: int, graph: Graph):
    """A MatMul's bias: the constant vector of the one Add that consumes its output."""
    consumers = graph.consumers.get(node.output[0], [])
    if len(consumers) != 1 or consumers[0].op_type != "Add":
        return None
    for name in consumers[0].input:
        if name != node.output[0] and graph.is_weight(name) and _shape(graph, name) in ((out_units,),):
            return name
    return None


def following_nonlinearity(graph: Graph, name: str, limit: int = 8) -> tuple:
    """(op type, attributes) of the first op after tensor ``name`` that is not in TRANSPARENT
    (nor a bias Add), when the path there is a single consumer chain; ("", {}) otherwise."""
    for _ in range(limit):
        consumers = graph.consumers.get(name, [])
        if len(consumers) != 1:
            return ("", {})
        node = consumers[0]
        is_bias_add = node.op_type in ("Add", "Sub") and any(graph.is_constant(i) for i in node.input if i != name)
        if node.op_type in TRANSPARENT or is_bias_add:
            name = node.output[0]
            continue
        return (node.op_type, attributes(node))
    return ("", {})


def weighted_layers(graph: Graph, table: RuleTable) -> list[StaticLayer]:
    """Every node of a `weighted` rule whose weight is a float constant, in graph order;
    a weight shared by several nodes is listed at its first use only."""
    layers, seen = [], set()
    for node in graph.nodes:
        rule = table.lookup(node)
        if rule is None or rule.kind != "weighted":
            continue
        found = _weight_input(node, rule, graph)
        if found is None or found[0] in seen:
            continue
        weight, index = found
        attrs = attributes(node)
        group_attr = rule.get("group_attr")
        layout = Layout(rule.get("fan_in"), _shape(graph, weight),
                        groups=int(attrs.get(group_attr, 1)) if group_attr else 1,
                        trans_b=bool(attrs.get("transB", 0)), weight_first=(index == 0))
        try:
            out_units = layout.canonical_shape[0]
        except (IndexError, ValueError):
            continue
        if len(layout.shape) < 1 or (layout.kind in ("conv", "conv_transpose") and len(layout.shape) < 3):
            continue
        bias_index = rule.get("bias")
        bias = node.input[bias_index] if bias_index is not None and len(node.input) > bias_index else None
        if not (bias and graph.is_weight(bias)):
            bias = _following_bias(node, out_units, graph) if layout.kind == "matmul" else None
        seen.add(weight)
        layers.append(StaticLayer(node, weight, bias, layout, following_nonlinearity(graph, node.output[0])))
    return layers


def normalization_params(graph: Graph) -> list[tuple]:
    """(node, scale name, shift name, running mean name, running var name) of normalization layers;
    a name is None where that input is absent or not a float constant."""
    found = []
    for node in graph.nodes:
        if node.op_type not in NORMALIZATION_PARAMS:
            continue
        names = []
        for i in NORMALIZATION_PARAMS[node.op_type] + RUNNING_STATS.get(node.op_type, (None, None)):
            ok = i is not None and i < len(node.input) and node.input[i] and graph.is_weight(node.input[i])
            names.append(node.input[i] if ok else None)
        found.append((node, *names))
    return found


def embedding_tables(graph: Graph) -> list[str]:
    """Float weights read by Gather with non-constant indices (embedding tables)."""
    tables = []
    for node in graph.nodes:
        if node.op_type == "Gather" and len(node.input) == 2 and graph.is_weight(node.input[0]) \
                and not graph.is_constant(node.input[1]) and node.input[0] not in tables:
            tables.append(node.input[0])
    return tables
