"""The forward pass with its kinks frozen at reference weights, for exact finite differences.

A ReLU network's gradient jumps wherever a pre-activation crosses 0, so a finite
difference of gradients, (g(theta + eps v) - g(theta - eps v)) / 2 eps, picks up a term
of order jump/eps from every unit that crosses 0 between the two points: on a
ResNet-20 batch that is 20-30% of the Hessian-vector product at any eps float32 can
resolve. Double backward (PyTorch) takes ReLU'' = 0, i.e. the activation pattern fixed.

The frozen forward does the same: a reference copy of the weight-dependent part of the
graph runs on reference weights ``ref/<W>`` (inputs), and every op whose output selects
by a comparison takes the selection from that copy:

    Relu(x)           -> x * (x_ref > 0)
    LeakyRelu(x)      -> where(x_ref > 0, x, alpha x)
    PRelu(x, s)       -> where(x_ref > 0, x, s x)
    Clip(x, lo, hi)   -> where(x_ref < lo, lo, where(x_ref > hi, hi, x))
    Min(a, b), Max    -> where(a_ref <= b_ref, a, b), where(a_ref >= b_ref, a, b)
    Abs(x)            -> x * sign(x_ref)
    MaxPool(x)        -> x gathered at the reference's argmax indices
    comparisons, Sign, Round, Floor, Ceil, ArgMax, ArgMin read reference inputs.

With the live weights equal to the reference the values are the model's own; around
them the loss is smooth, and its gradient's finite difference converges to the
double-backward Hessian-vector product.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph

REF = "ref/"
_READS_REFERENCE = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Sign", "Round", "Floor",
                    "Ceil", "ArgMax", "ArgMin"}


class _Freezer:
    """Builds the frozen nodes; records which reference tensors they read."""

    def __init__(self, live: set):
        self.live = live
        self.needed: set[str] = set()
        self.indices: dict[str, str] = {}    # MaxPool output -> its reference argmax tensor
        self.nodes: list[onnx.NodeProto] = []

    def ref(self, name: str) -> str:
        if name not in self.live:
            return name
        self.needed.add(name)
        return REF + name

    def emit(self, node: onnx.NodeProto, op: str, inputs: list, output: str | None = None, **attrs) -> str:
        out = output or f"{node.output[0]}/frozen/{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def constant(self, node, value: float) -> str:
        return self.emit(node, "Constant", [], value=numpy_helper.from_array(np.array(value, np.float32)))

    def select(self, node, condition_op: str, a: str, b: str, when: str, otherwise: str, output=None) -> str:
        condition = self.emit(node, condition_op, [self.ref(a), self.ref(b)])
        return self.emit(node, "Where", [condition, when, otherwise], output)

    def freeze(self, node: onnx.NodeProto) -> bool:
        """Append the frozen form of ``node``; False when it has none (kept as it is)."""
        op, x, y = node.op_type, (node.input[0] if node.input else ""), node.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op in _READS_REFERENCE:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [self.ref(name) for name in node.input]
            self.nodes.append(copy)
        elif op == "Relu":
            mask = self.emit(node, "Cast", [self.emit(node, "Greater", [self.ref(x), self.constant(node, 0.0)])],
                             to=onnx.TensorProto.FLOAT)
            self.emit(node, "Mul", [x, mask], y)
        elif op in ("LeakyRelu", "PRelu"):
            slope = self.constant(node, attrs.get("alpha", 0.01)) if op == "LeakyRelu" else node.input[1]
            zero = self.constant(node, 0.0)
            self.select(node, "Greater", x, zero, x, self.emit(node, "Mul", [x, slope]), y)
        elif op == "Clip":
            low = node.input[1] if len(node.input) > 1 and node.input[1] else None
            high = node.input[2] if len(node.input) > 2 and node.input[2] else None
            value = x
            if high is not None:
                value = self.select(node, "Greater", x, high, high, value, None if low is not None else y)
            if low is not None:
                value = self.select(node, "Less", x, low, low, value, y)
            if value == x:
                self.emit(node, "Identity", [x], y)
        elif op in ("Min", "Max") and len(node.input) == 2:
            self.select(node, "LessOrEqual" if op == "Min" else "GreaterOrEqual", node.input[0], node.input[1],
                        node.input[0], node.input[1], y)
        elif op == "Abs":
            self.emit(node, "Mul", [x, self.emit(node, "Sign", [self.ref(x)])], y)
        elif op == "MaxPool" and len(node.output) == 1 and not attrs.get("storage_order", 0):
            self.needed.add(y)   # the reference MaxPool, which also outputs its argmax indices
            self.indices[y] = f"{REF}{y}/indices"
            flat = self.emit(node, "Reshape", [x, self.emit(node, "Constant", [], value=numpy_helper.from_array(
                np.array([-1], np.int64)))])
            self.emit(node, "Gather", [flat, self.indices[y]], y, axis=0)
        else:
            return False
        return True


def _live(order, sources: set) -> set:
    live = set(sources)
    for node in order:
        if any(name in live for name in node.input):
            live.update(out for out in node.output if out)
    return live


def freeze_forward(forward: onnx.ModelProto, weights) -> onnx.ModelProto:
    """A copy of ``forward`` (weights as inputs) with kinks frozen at the inputs ``ref/<W>``."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(forward)
    graph = frozen.graph
    order = Graph(frozen).nodes
    live = _live(order, set(weights))
    freezer = _Freezer(live)
    for node in order:
        if not any(name in live for name in node.input) or not freezer.freeze(node):
            freezer.nodes.append(node)
    producer = {out: node for node in order for out in node.output if out}
    wanted, stack = set(), list(freezer.needed)
    while stack:   # the reference copy: every live ancestor of what the frozen nodes read
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in wanted:
            continue
        wanted.add(id(node))
        stack.extend(i for i in node.input if i in live)
    reference = []
    for node in order:
        if id(node) not in wanted:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = REF + (node.name or node.output[0])
        copy.input[:] = [REF + i if i in live else i for i in node.input]
        copy.output[:] = [REF + o if o else o for o in node.output]
        if node.output[0] in freezer.indices:
            copy.output[:] = [REF + node.output[0], freezer.indices[node.output[0]]]
        reference.append(copy)
    del graph.node[:]
    graph.node.extend(reference + freezer.nodes)
    ordered = Graph(frozen).nodes   # reference nodes may read constants defined later
    del graph.node[:]
    graph.node.extend(ordered)
    inputs = {i.name: i for i in graph.input}
    for name in weights:
        ref = graph.input.add()
        ref.CopyFrom(inputs[name])
        ref.name = REF + name
    return frozen
