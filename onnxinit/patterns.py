"""Weighted layers, residual blocks and stages of an exported graph, found by dataflow alone.

Only the signal dataflow counts (tensors computed from the model input); weights,
constants and shape arithmetic are ignored. Names of nodes and modules are never read.

* **Block.** An Add (or a two-input Sum) of two signals is a residual block when
  its immediate dominator x (the nearest op every path from the model input to
  the Add passes through) splits into two sides that share no op: the
  *shortcut*, with no weighted layer ("identity" when it holds only elementwise
  and normalization ops, "downsampling" when it also pools, slices or pads) or
  exactly one ("projection", possibly after pooling, before normalization), and
  the *branch*, with more weighted layers than the shortcut. Pre- and
  post-activation blocks, with or without normalization, look the same here.
* **Roles in a branch.** Its *first* layers are fed by no other branch layer,
  its *last* layers feed no other branch layer (a one-layer branch is "last"),
  the rest are *middle* layers. Two layers make a basic block, three a bottleneck.
* **Stage.** A block continues the stage of the block whose output reaches its
  input x through elementwise / normalization ops only, when its shortcut is
  the identity; a projection or downsampling shortcut, or no such predecessor,
  starts a new stage. B_k is the number of blocks in stage k.
* **Feed-forward layers** are in no block: "stem" before the first block,
  "head" after the last one, "transition" between; "feed-forward" in a graph
  with no block at all.
* **Rectified.** A layer is rectified when its output goes, through a single
  chain of normalization, reshaping, max-pooling, dropout or constant
  bias/scale ops, into Relu, LeakyRelu, PRelu, or Clip / Max at 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph
from .kinds.common import attributes
from .layouts import Layout
from .rules import RuleTable

ROOT = -1                 # the model inputs, as one node of the dataflow graph
SIDE_LIMIT = 5000         # ops between a block's input and its Add beyond which we stop looking
PASSTHROUGH_KINDS = {"elementwise", "batchnorm", "layernorm", "dropout", "identity"}
NORMALIZATIONS = {"BatchNormalization", "InstanceNormalization", "GroupNormalization", "LayerNormalization"}
TRANSPARENT = NORMALIZATIONS | {"Identity", "Dropout", "Cast", "Reshape", "Flatten", "Transpose", "Squeeze",
                                "Unsqueeze", "MaxPool", "Pad"}
RECTIFIERS = {"Relu", "LeakyRelu", "PRelu"}


@dataclass
class Layer:
    """A weighted node and where it sits."""

    node: object
    weight: str                 # the weight input (an initializer, a Constant, or a weight norm's output)
    bias: str | None
    layout: Layout
    weight_norm: object | None  # weightnorm.WeightNorm when the weight is g · v / ‖v‖
    rectified: bool
    role: str = "feed-forward"  # first | middle | last | shortcut | stem | head | transition | feed-forward
    block: int | None = None
    stage: int | None = None

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


@dataclass
class Block:
    index: int                  # 1-based, in graph order
    add: str                    # the Add node's name
    output: str                 # its output tensor
    input: str                  # x, the tensor both sides start from
    shortcut: str               # identity | projection | downsampling
    branch: list                # layer names, in graph order
    first: list
    last: list
    projection: str | None = None
    stage: int = 0

    @property
    def kind(self) -> str:
        return {2: "basic", 3: "bottleneck"}.get(len(self.branch), f"{len(self.branch)}-layer")


@dataclass
class Stage:
    index: int
    blocks: list = field(default_factory=list)   # block indices

    @property
    def count(self) -> int:
        return len(self.blocks)


@dataclass
class Structure:
    layers: list
    blocks: list
    stages: list
    skipped: list               # weighted nodes left alone, with the reason

    def stage_of(self, layer: Layer) -> Stage | None:
        return self.stages[layer.stage - 1] if layer.stage else None


# --- weighted layers ---------------------------------------------------------
def _source(graph: Graph, name: str) -> str:
    """The tensor behind a chain of Identity ops (PyTorch's exporter shares equal constants that way)."""
    while (node := graph.producer.get(name)) is not None and node.op_type == "Identity" \
            and node.domain in ("", "ai.onnx"):
        name = node.input[0]
    return name


def _bias(graph: Graph, node, rule, out_units: int):
    """The layer's own bias input, or for a MatMul the constant vector of the one Add after it."""
    index = rule.get("bias")
    if index is not None and index < len(node.input) and node.input[index]:
        bias = _source(graph, node.input[index])
        return bias if graph.weight_tensor(bias) is not None and graph.is_weight(bias) else None
    consumers = graph.consumers.get(node.output[0], [])
    if node.op_type != "MatMul" or len(consumers) != 1 or consumers[0].op_type != "Add":
        return None
    for name in consumers[0].input:
        name = _source(graph, name)
        tensor = graph.weight_tensor(name)
        if name != node.output[0] and tensor is not None and graph.is_weight(name) \
                and int(np.prod(tensor.dims, dtype=np.int64)) == out_units and len(tensor.dims) <= 1:
            return name
    return None


def _is_rectifier(graph: Graph, node, name: str) -> bool:
    """Relu, LeakyRelu, PRelu, Clip with min 0 (ReLU6), Max with a constant 0."""
    if node.op_type in RECTIFIERS:
        return True
    if node.op_type == "Clip":
        low = graph.constant_value(node.input[1]) if len(node.input) > 1 and node.input[1] \
            else attributes(node).get("min")
    elif node.op_type == "Max":
        others = [i for i in node.input if i and i != name]
        low = graph.constant_value(others[0]) if len(others) == 1 else None
    else:
        return False
    return low is not None and np.asarray(low).size == 1 and float(np.asarray(low).reshape(-1)[0]) == 0.0


def _rectified(graph: Graph, name: str, limit: int = 8) -> bool:
    """Does tensor ``name`` reach a rectifier through a single chain of TRANSPARENT or constant-operand ops?"""
    for _ in range(limit):
        consumers = graph.consumers.get(name, [])
        if len(consumers) != 1 or name in graph.outputs:
            return False
        node = consumers[0]
        if _is_rectifier(graph, node, name):
            return True
        constant_op = node.op_type in ("Add", "Sub", "Mul", "Div") and all(
            graph.is_constant(i) for i in node.input if i and i != name)
        if node.op_type not in TRANSPARENT and not constant_op:
            return False
        name = node.output[0]
    return False


def _weight_input(graph: Graph, node, rule):
    """(weight, index) of a weighted node whose other operand is a signal; None if there is none."""
    spec = rule.get("weight", 1)
    candidates = range(min(len(node.input), 2)) if spec == "any" else [int(spec)]
    signal = graph.signal_tensors
    for i in candidates:
        if i < len(node.input) and node.input[i] and node.input[i] not in signal:
            others = [n for j, n in enumerate(node.input[:2]) if j != i and n in signal]
            if others:
                return node.input[i], i
    return None


def find_layers(graph: Graph, table: RuleTable) -> tuple[list, list]:
    """(layers, skipped): every node of a `weighted` rule with a constant weight beside a signal,
    in graph order; a weight computed by ops that are not a weight norm is skipped with a reason."""
    layers, skipped = [], []
    for node in graph.nodes:
        rule = table.lookup(node)
        if rule is None or rule.kind != "weighted":
            continue
        found = _weight_input(graph, node, rule)
        if found is None:
            continue
        weight, index = _source(graph, found[0]), found[1]
        name = node.name or node.output[0]
        if not graph.is_weight(weight):
            if weight in graph.producer:
                skipped.append((name, f"weight {weight!r} is computed by ops that are not a weight norm"))
            continue
        wn = graph.weight_norm(weight) if graph.weight_tensor(weight) is None and \
            graph.weight_view(weight) is None else None
        known = graph.weight_shape(weight)
        if known is None:
            skipped.append((name, f"weight {weight!r} has no known shape"))
            continue
        shape = known[0]
        attrs = attributes(node)
        group_attr = rule.get("group_attr")
        layout = Layout(rule.get("fan_in"), shape, groups=int(attrs.get(group_attr, 1)) if group_attr else 1,
                        trans_b=bool(attrs.get("transB", 0)), weight_first=(index == 0))
        try:
            out_units, fan, taps = layout.canonical_shape
            fits = min(out_units, fan, taps, layout.group_count) > 0 and out_units % layout.group_count == 0 \
                and (layout.kind not in ("conv", "conv_transpose") or len(shape) >= 3)
        except (IndexError, ValueError, TypeError, ZeroDivisionError):
            fits = False
        if not fits:
            skipped.append((name, f"weight {weight!r} of shape {shape} does not fit a {layout.kind} layer "
                                  f"with {layout.groups} groups"))
            continue
        layers.append(Layer(node, weight, _bias(graph, node, rule, out_units), layout, wn,
                            _rectified(graph, node.output[0])))
    return layers, skipped


# --- dataflow: dominators ------------------------------------------------------
class Dataflow:
    """The signal graph: ops whose outputs carry the signal, their predecessors and dominators."""

    def __init__(self, graph: Graph):
        signal = graph.signal_tensors
        self.nodes = [n for n in graph.nodes if any(o in signal for o in n.output if o)]
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.signal_inputs = [[t for t in n.input if t in signal] for n in self.nodes]
        self.preds = [sorted({self.producer.get(t, ROOT) for t in ins}) or [ROOT] for ins in self.signal_inputs]
        self.succs = [[] for _ in self.nodes]
        for i, preds in enumerate(self.preds):
            for p in preds:
                if p != ROOT:
                    self.succs[p].append(i)
        self.idom, depth = {}, {ROOT: 0}
        for i, preds in enumerate(self.preds):   # graph order is topological: one pass suffices on a DAG
            d = preds[0]
            for p in preds[1:]:
                d = self._meet(d, p, depth)
            self.idom[i] = d
            depth[i] = depth[d] + 1

    def _meet(self, a: int, b: int, depth: dict) -> int:
        while a != b:
            if depth[a] >= depth[b]:
                a = self.idom[a]
            else:
                b = self.idom[b]
        return a

    def side(self, tensor: str, fork: int) -> set | None:
        """The ops on paths from the fork to ``tensor`` (the fork excluded); None if too many."""
        start = self.producer.get(tensor, ROOT)
        found, stack = set(), [start]
        while stack:
            i = stack.pop()
            if i == fork or i in found:
                continue
            if i == ROOT or len(found) > SIDE_LIMIT:
                return None
            found.add(i)
            stack.extend(self.preds[i])
        return found

    def fork_tensor(self, fork: int, consumers) -> str | None:
        """The tensor produced by the fork (a model input for ROOT) that the sides start from."""
        for i in consumers:
            for t in self.signal_inputs[i]:
                if self.producer.get(t, ROOT) == fork:
                    return t
        return None


# --- blocks and stages -----------------------------------------------------------
def _passthrough(graph: Graph, table: RuleTable, flow: Dataflow, i: int) -> bool:
    """An elementwise or normalization op on one signal (a residual stream goes through it unchanged)."""
    node = flow.nodes[i]
    rule = table.lookup(node)
    kind = rule.kind if rule is not None else None
    return len(flow.signal_inputs[i]) == 1 and (kind in PASSTHROUGH_KINDS or node.op_type in NORMALIZATIONS)


def _roles(flow: Dataflow, side: set, weighted: dict) -> tuple[list, list]:
    """(first, last): branch layers fed by no other branch layer / feeding none."""
    order = sorted(side)
    fed, feeds = {}, {}
    for i in order:
        fed[i] = any(p in side and (p in weighted or fed[p]) for p in flow.preds[i])
    for i in reversed(order):
        feeds[i] = any(s in side and (s in weighted or feeds[s]) for s in flow.succs[i])
    members = [i for i in order if i in weighted]
    return [i for i in members if not fed[i]], [i for i in members if not feeds[i]]


def _block(graph, table, flow, i, weighted, count):
    """The residual block whose Add is op ``i``, or None."""
    node = flow.nodes[i]
    inputs = flow.signal_inputs[i]
    if node.op_type not in ("Add", "Sum") or node.domain not in ("", "ai.onnx") or len(inputs) != 2 \
            or inputs[0] == inputs[1]:
        return None
    fork = flow.idom[i]
    sides = [flow.side(t, fork) for t in inputs]
    if sides[0] is None or sides[1] is None or sides[0] & sides[1]:
        return None
    counts = [sum(1 for j in s if j in weighted) for s in sides]
    if counts[0] == counts[1] or min(counts) > 1:
        return None
    short, branch = (sides[0], sides[1]) if counts[0] < counts[1] else (sides[1], sides[0])
    projection = [weighted[j] for j in sorted(short) if j in weighted]
    if projection:
        kind = "projection"
    else:
        kind = "identity" if all(_passthrough(graph, table, flow, j) for j in short) else "downsampling"
    x = flow.fork_tensor(fork, list(short | branch) + [i])
    if x is None:
        return None
    first, last = _roles(flow, branch, weighted)
    return Block(count, node.name or node.output[0], node.output[0], x, kind,
                 [weighted[j].name for j in sorted(branch) if j in weighted],
                 [weighted[j].name for j in first], [weighted[j].name for j in last],
                 projection[0].name if projection else None), branch, short


def _predecessor(graph, table, flow, block: Block, outputs: dict):
    """The block whose output reaches ``block``'s input through passthrough ops only."""
    tensor = block.input
    while tensor not in outputs:
        i = flow.producer.get(tensor, ROOT)
        if i == ROOT or not _passthrough(graph, table, flow, i):
            return None
        tensor = flow.signal_inputs[i][0]
    return outputs[tensor]


def find_structure(graph: Graph, table: RuleTable | None = None) -> Structure:
    """Layers, residual blocks and stages of ``graph`` (no blocks: a feed-forward graph)."""
    table = table or RuleTable()
    layers, skipped = find_layers(graph, table)
    flow = Dataflow(graph)
    weighted = {flow.index[id(layer.node)]: layer for layer in layers if id(layer.node) in flow.index}
    blocks, stages, outputs, adds = [], [], {}, []
    for i in range(len(flow.nodes)):
        found = _block(graph, table, flow, i, weighted, len(blocks) + 1)
        if found is None:
            continue
        block, branch, short = found
        before = _predecessor(graph, table, flow, block, outputs)
        if before is not None and block.shortcut == "identity":
            block.stage = before.stage
            stages[block.stage - 1].blocks.append(block.index)
        else:
            stages.append(Stage(len(stages) + 1, [block.index]))
            block.stage = len(stages)
        blocks.append(block)
        outputs[block.output] = block
        adds.append(i)
        for j in sorted(branch | short):
            layer = weighted.get(j)
            if layer is None or layer.block is not None:
                continue      # a layer of a nested block keeps its innermost role
            layer.block, layer.stage = block.index, block.stage
            layer.role = ("shortcut" if j in short else "last" if layer.name in block.last
                          else "first" if layer.name in block.first else "middle")
    for i, layer in weighted.items():
        if layer.block is None and adds:
            layer.role = "stem" if i < adds[0] else "head" if i > adds[-1] else "transition"
    return Structure(layers, blocks, stages, [f"{n}: {why}" for n, why in skipped])
