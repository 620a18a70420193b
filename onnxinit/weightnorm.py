"""Weight-norm reparametrizations found in the graph: w = g · v / ‖v‖.

PyTorch's ``torch.nn.utils.weight_norm`` and ``parametrizations.weight_norm``,
exported in training mode, leave the reparametrization in the graph as ops on
two initializers, e.g. ``Mul(Div(v, ReduceL2(v, axes)), g)``. Recognized here:
any product and quotient (Mul, Div, Reciprocal) of the initializers v and g and
one norm of v, with Identity / Cast / Unsqueeze / Squeeze / Reshape / Flatten /
Expand on the factors, the norm written as ReduceL2(v), Sqrt or Pow(·, 0.5) of
ReduceSum(Pow(v, 2) | Mul(v, v)) or of ReduceSumSquare(v), axes as an attribute
or a constant input; then any chain of Identity / Cast / Reshape / Flatten /
Squeeze / Unsqueeze / Transpose up to the layer. LpNormalization(v, p=2) counts
as v / ‖v‖ over its axis.

A new weight W for such a layer is written as v = W / ‖W‖_A and g = ‖W‖_A,
with A the norm's axes (of v): then g · v / ‖v‖ = W exactly, v has unit norm
over A (unit rows for PyTorch's default dim=0), and g holds W's row norms. A
subgraph is taken for a weight norm only when running it on split(W) gives W back.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from .kinds.common import attributes
from .op_eval import run_node

# Ops that only change the shape or type of a factor (their first input is the factor).
FACTOR_SHAPE_OPS = {"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand"}
# Ops between the product and the layer that move elements without changing them.
PERMUTE_OPS = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
MAX_NODES = 64   # a weight-norm subgraph is a handful of nodes; stop looking beyond this


class NotWeightNorm(Exception):
    """The subgraph computing a weight is not a weight norm this module can write."""


class ComputedWeight:
    """A weight the graph computes from two initializers v and g (a weight norm here, a weight
    standardization in weightstd.py). Subclasses give ``split(graph, w) -> (v, g)`` and
    ``evaluate(graph, values)``; a weight is written through them."""

    def write(self, graph, w: np.ndarray) -> None:
        """Store ``w`` as the layer's weight through new v and g (each in its own dtype)."""
        v, g = self.split(graph, w)
        graph.replace_payload(self.v, v)
        graph.replace_payload(self.g, g)

    def reproduces(self, graph, w: np.ndarray) -> bool:
        """Does the subgraph, run on split(w), give ``w`` back? (then a write is exact)"""
        w = np.asarray(w, np.float64)
        v, g = self.split(graph, w)
        dtypes = [onnx.helper.tensor_dtype_to_np_dtype(graph.weight_tensor(n).data_type) for n in (self.v, self.g)]
        got = np.asarray(self.evaluate(graph, {self.v: v.astype(dtypes[0]), self.g: g.astype(dtypes[1])}), np.float64)
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-30)
        tolerance = (1e-5 if min(d.itemsize for d in dtypes) >= 4 else 2e-3) * scale
        return got.shape == w.shape and float(np.max(np.abs(got - w), initial=0.0)) <= tolerance


@dataclass(frozen=True)
class WeightNorm(ComputedWeight):
    output: str              # the computed weight W
    v: str                   # direction initializer
    g: str                   # magnitude initializer
    axes: tuple              # axes of v the norm runs over
    nodes: tuple             # the subgraph's nodes, in graph order
    permutation: np.ndarray | None   # W.flat[i] = product.flat[permutation.flat[i]]; None: same order
    shape: tuple = ()        # W's shape

    def evaluate(self, graph, values: dict | None = None) -> np.ndarray:
        """W computed from the current v and g (or ``values`` in their place)."""
        values = dict(values or {})
        for node in self.nodes:
            inputs = []
            for name in node.input:
                if not name:
                    inputs.append(None)
                elif name in values:
                    inputs.append(values[name])
                else:
                    value = graph.constant_value(name)
                    if value is None:
                        raise NotWeightNorm(f"input {name!r} of the weight norm has no known value")
                    inputs.append(value)
            for out, value in zip(node.output, run_node(node, inputs, graph.opsets)):
                values[out] = np.asarray(value)
        return values[self.output]

    def split(self, graph, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(v, g) with g · v / ‖v‖_A = ``w``: v = w / ‖w‖_A (unit norm over A), g = ‖w‖_A.

        A slice of w that is all zeros gets a constant unit-norm v and g = 0."""
        v_shape = tuple(graph.weight_tensor(self.v).dims)
        g_shape = tuple(graph.weight_tensor(self.g).dims)
        flat = np.asarray(w, np.float64).reshape(-1)
        if flat.size != int(np.prod(v_shape, dtype=np.int64)):
            raise NotWeightNorm(f"the new weight has {flat.size} elements, v has shape {v_shape}")
        if self.permutation is not None:
            product = np.empty_like(flat)
            product[self.permutation.reshape(-1)] = flat
            flat = product
        v = flat.reshape(v_shape)
        norms = np.sqrt(np.sum(v * v, axis=self.axes, keepdims=True))
        if norms.size != int(np.prod(g_shape, dtype=np.int64)):
            raise NotWeightNorm(f"g has shape {g_shape}, the norm over axes {self.axes} has {norms.size} values")
        zero = norms == 0
        count = v.size // norms.size
        v = np.where(zero, 1.0 / np.sqrt(count), v / np.where(zero, 1.0, norms))
        return v, norms.reshape(g_shape)



def _is_tensor(graph, name: str) -> bool:
    return graph.weight_tensor(name) is not None and graph.is_weight(name)


def _axes(graph, node, rank: int):
    """The reduction axes of a Reduce* node (attribute or constant input), normalized; None if unknown."""
    attrs = attributes(node)
    if attrs.get("noop_with_empty_axes", 0):
        return None
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(node.input) > 1 and node.input[1]:
        value = graph.constant_value(node.input[1])
        if value is None:
            return None
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    else:
        axes = list(range(rank))
    if not attrs.get("keepdims", 1) and len(axes) != rank:
        return None     # the quotient would not broadcast back onto v
    return tuple(sorted(a % rank for a in axes))


def _strip(graph, name: str, nodes: list) -> str:
    """Follow Identity / Cast producers back."""
    while (node := graph.producer.get(name)) is not None and node.op_type in ("Identity", "Cast"):
        nodes.append(node)
        name = node.input[0]
    return name


def _scalar(graph, name: str) -> float | None:
    value = graph.constant_value(name)
    return None if value is None or np.asarray(value).size != 1 else float(np.asarray(value).reshape(-1)[0])


def _norm(graph, node, nodes: list):
    """(x, axes) when ``node`` computes the 2-norm of initializer x over some axes; else None."""
    op = node.op_type
    if op == "ReduceL2":
        source, reduce = node.input[0], node
    elif op in ("Sqrt", "Pow"):
        if op == "Pow" and _scalar(graph, node.input[1]) != 0.5:
            return None
        reduce = graph.producer.get(node.input[0])
        if reduce is None or reduce.op_type not in ("ReduceSum", "ReduceSumSquare"):
            return None
        source = reduce.input[0]
        if reduce.op_type == "ReduceSum":
            square = graph.producer.get(source)
            if square is None:
                return None
            squares = (square.op_type == "Pow" and _scalar(graph, square.input[1]) == 2) or \
                (square.op_type == "Mul" and square.input[0] == square.input[1])
            if not squares:
                return None
            nodes.append(square)
            source = square.input[0]
        nodes.append(reduce)
    else:
        return None
    local = []
    x = _strip(graph, source, local)
    if not _is_tensor(graph, x):
        return None
    axes = _axes(graph, reduce, len(graph.weight_tensor(x).dims))
    if axes is None:
        return None
    nodes.extend(local)
    nodes.append(node)
    return x, axes


def _factors(graph, name: str, power: int, terms: list, nodes: list) -> bool:
    """Append (kind, tensor, axes, power) terms whose product is ``name``; False if it is not such a product."""
    if len(nodes) > MAX_NODES:
        return False
    if _is_tensor(graph, name):
        terms.append(("tensor", name, None, power))
        return True
    node = graph.producer.get(name)
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    op = node.op_type
    if op in ("Mul", "Div"):
        nodes.append(node)
        second = power if op == "Mul" else -power
        return _factors(graph, node.input[0], power, terms, nodes) and \
            _factors(graph, node.input[1], second, terms, nodes)
    if op == "Reciprocal":
        nodes.append(node)
        return _factors(graph, node.input[0], -power, terms, nodes)
    if op in FACTOR_SHAPE_OPS:
        nodes.append(node)
        return _factors(graph, node.input[0], power, terms, nodes)
    if op == "LpNormalization" and attributes(node).get("p", 2) == 2:
        x = _strip(graph, node.input[0], nodes)
        if not _is_tensor(graph, x):
            return False
        nodes.append(node)
        rank = len(graph.weight_tensor(x).dims)
        terms.append(("tensor", x, None, power))
        terms.append(("norm", x, (attributes(node).get("axis", -1) % rank,), -power))
        return True
    found = _norm(graph, node, nodes)
    if found is None:
        return False
    terms.append(("norm", found[0], found[1], power))
    return True


def _permutation(graph, chain: list, size: int, shape: tuple) -> np.ndarray | None:
    """Where each element of W comes from in the product, by running the chain on indices."""
    if all(n.op_type in ("Identity", "Cast") for n in chain):
        return None
    index = np.arange(size, dtype=np.int64).reshape(shape)
    for node in reversed(chain):
        if node.op_type in ("Identity", "Cast"):
            continue
        inputs = [index] + [graph.constant_value(n) if n else None for n in node.input[1:]]
        if any(v is None for v, n in zip(inputs[1:], node.input[1:]) if n):
            raise NotWeightNorm(f"{node.op_type} between the weight norm and the layer has a non-constant input")
        index = np.asarray(run_node(node, inputs, graph.opsets)[0])
    if index.size != size or np.unique(index).size != size:
        raise NotWeightNorm("the ops between the weight norm and the layer are not a permutation")
    return index


def detect(graph, name: str) -> WeightNorm | None:
    """The weight norm computing tensor ``name``, or None when it is not one."""
    chain, top = [], name
    while (node := graph.producer.get(top)) is not None and node.op_type in PERMUTE_OPS \
            and node.domain in ("", "ai.onnx") and len(chain) < MAX_NODES:
        chain.append(node)
        top = node.input[0]
    terms, nodes = [], []
    if not _factors(graph, top, 1, terms, nodes):
        return None
    norms = [t for t in terms if t[0] == "norm"]
    tensors = [t for t in terms if t[0] == "tensor"]
    if len(norms) != 1 or norms[0][3] != -1 or len(tensors) != 2 or any(t[3] != 1 for t in tensors):
        return None
    v, axes = norms[0][1], norms[0][2]
    others = [t[1] for t in tensors if t[1] != v]
    if len(others) != 1 or len(tensors) - len(others) != 1:
        return None
    g = others[0]
    v_dims = tuple(graph.weight_tensor(v).dims)
    kept = int(np.prod([d for i, d in enumerate(v_dims) if i not in axes], dtype=np.int64))
    if int(np.prod(graph.weight_tensor(g).dims, dtype=np.int64)) != kept:
        return None
    members = {id(n) for n in nodes + chain}
    ordered = tuple(n for n in graph.nodes if id(n) in members)
    try:
        permutation = _permutation(graph, chain, int(np.prod(v_dims, dtype=np.int64)), v_dims)
        found = WeightNorm(name, v, g, axes, ordered, permutation)
        w = found.evaluate(graph)
        return replace(found, shape=tuple(w.shape)) if found.reproduces(graph, w) else None
    except Exception:  # noqa: BLE001 - any op the reference cannot run, any shape that does not fit: not one
        return None
