"""Weight standardization found in the graph: W = g · (v - mean(v)) / sqrt(var(v) + eps).

NFNets and BiT (timm's ``ScaledStdConv2d``, ``StdConv2d``) standardize each output unit's
weights in the forward pass, with ``F.batch_norm`` on the weight reshaped to
(1, units, fan-in), which exports as

    Reshape(v) -> BatchNormalization(training_mode=1, scale=g, bias=0) -> Reshape -> the layer

(any chain of Identity / Cast / Reshape / Flatten / Squeeze / Unsqueeze / Transpose on
either side). Per BatchNorm channel c (a unit), over its elements i:
    W_ci = g_c (v_ci - mu_c) / sqrt(sigma_c^2 + eps).
A new weight W whose units have mean 0 is written as v = W and g_c = sqrt(var(W_c) + eps):
the subgraph then gives W back exactly. AutoInit centers each unit of such a weight before
it computes the layer's statistics (``center``), so what the graph computes is what it drew.
A subgraph is taken for a standardization only when running it on split(W) gives W back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kinds.common import attributes
from .op_eval import run_node
from .weightnorm import PERMUTE_OPS, ComputedWeight

MAX_CHAIN = 16


@dataclass(frozen=True)
class WeightStandardization(ComputedWeight):
    output: str              # the computed weight W
    v: str                   # the standardized initializer
    g: str                   # per-unit gain (BatchNormalization's scale)
    eps: float
    to_x: np.ndarray = field(repr=False)   # X.flat[i] = v.flat[to_x.flat[i]] (X: BatchNorm's input, its shape)
    to_w: np.ndarray = field(repr=False)   # W.flat[i] = Y.flat[to_w.flat[i]] (Y: BatchNorm's output, W's shape)
    axes: tuple              # axes of v each unit's statistics run over (v = X's shape)
    row_centered = True      # AutoInit must draw units with mean 0 (see ``center``)

    @property
    def shape(self) -> tuple:
        return tuple(self.to_w.shape)

    def _standardize(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        axes = tuple(a for a in range(x.ndim) if a != 1)
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        shape = [1] * x.ndim
        shape[1] = x.shape[1]
        return np.asarray(g, np.float64).reshape(shape) * (x - mean) / np.sqrt(var + self.eps)

    def evaluate(self, graph, values: dict | None = None) -> np.ndarray:
        """W from the current v and g (or ``values`` in their place)."""
        values = values or {}
        v = np.asarray(values[self.v] if self.v in values else graph.constant_value(self.v), np.float64)
        g = np.asarray(values[self.g] if self.g in values else graph.constant_value(self.g), np.float64)
        x = v.reshape(-1)[self.to_x]
        y = self._standardize(x, g.reshape(-1))
        return y.reshape(-1)[self.to_w]

    def _as_x(self, w: np.ndarray) -> np.ndarray:
        y = np.empty(self.to_x.size)
        y[self.to_w.reshape(-1)] = np.asarray(w, np.float64).reshape(-1)
        return y.reshape(self.to_x.shape)

    def center(self, w: np.ndarray) -> np.ndarray:
        """``w`` (W's shape) with each unit's mean removed: what the subgraph can reproduce."""
        x = self._as_x(w)
        axes = tuple(a for a in range(x.ndim) if a != 1)
        x = x - x.mean(axis=axes, keepdims=True)
        return x.reshape(-1)[self.to_w].astype(np.asarray(w).dtype, copy=False)

    def split(self, graph, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(v, g) with standardize(v) * g = ``w`` for a ``w`` whose units have mean 0."""
        x = self._as_x(w)
        axes = tuple(a for a in range(x.ndim) if a != 1)
        g = np.sqrt(x.var(axis=axes) + self.eps).reshape(-1)
        v = np.empty(x.size)
        v[self.to_x.reshape(-1)] = x.reshape(-1)
        v_shape = tuple(graph.weight_tensor(self.v).dims)
        g_shape = tuple(graph.weight_tensor(self.g).dims)
        return v.reshape(v_shape), g.reshape(g_shape)



def _chain_up(graph, name: str) -> tuple[str, list]:
    """Walk producers back through PERMUTE_OPS: (the tensor above them, the nodes, top first)."""
    chain = []
    while (node := graph.producer.get(name)) is not None and node.op_type in PERMUTE_OPS \
            and node.domain in ("", "ai.onnx") and len(chain) < MAX_CHAIN:
        chain.append(node)
        name = node.input[0]
    return name, chain[::-1]


def _constant(graph, name: str):
    """A constant's value, through Identity nodes (torch.onnx reads merged constants that way)."""
    while (node := graph.producer.get(name)) is not None and node.op_type == "Identity":
        name = node.input[0]
    return graph.constant_value(name)


def _moved(graph, chain: list, index: np.ndarray) -> np.ndarray:
    """Run ``chain`` (top first) on an index array: where each element of its output comes from."""
    for node in chain:
        if node.op_type in ("Identity", "Cast"):
            continue
        inputs = [index] + [_constant(graph, n) if n else None for n in node.input[1:]]
        if any(value is None for value, n in zip(inputs[1:], node.input[1:]) if n):
            raise ValueError("a non-constant shape input")
        index = np.asarray(run_node(node, inputs, graph.opsets)[0])
    return index


def detect(graph, name: str) -> WeightStandardization | None:
    """The weight standardization computing tensor ``name``, or None when it is not one."""
    top, after = _chain_up(graph, name)
    bn = graph.producer.get(top)
    if bn is None or bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") \
            or not attributes(bn).get("training_mode", 0) or len(bn.input) < 3:
        return None
    v, before = _chain_up(graph, bn.input[0])
    g = bn.input[1]
    while (node := graph.producer.get(g)) is not None and node.op_type == "Identity":
        g = node.input[0]   # torch.onnx reads a merged initializer through an Identity
    if graph.weight_tensor(v) is None or graph.weight_tensor(g) is None or not graph.is_weight(v):
        return None
    bias = _constant(graph, bn.input[2])
    if bias is None or np.any(np.asarray(bias) != 0):
        return None
    try:
        v_dims = tuple(int(d) for d in graph.weight_tensor(v).dims)
        size = int(np.prod(v_dims, dtype=np.int64))
        to_x = _moved(graph, before, np.arange(size, dtype=np.int64).reshape(v_dims))
        to_w = _moved(graph, after, np.arange(to_x.size, dtype=np.int64).reshape(to_x.shape))
        if to_x.ndim < 2 or to_x.size != size or np.unique(to_x).size != size or to_w.size != size \
                or np.unique(to_w).size != size:
            return None
        if int(np.prod(graph.weight_tensor(g).dims, dtype=np.int64)) != to_x.shape[1]:
            return None
        axes = tuple(a for a in range(len(v_dims)) if a != 1) if v_dims == tuple(to_x.shape) else ()
        found = WeightStandardization(name, v, g, float(attributes(bn).get("epsilon", 1e-5)), to_x, to_w, axes)
        w = found.evaluate(graph)
        return found if found.reproduces(graph, w) else None
    except Exception:  # noqa: BLE001 - any op the reference cannot run, any shape that does not fit: not one
        return None
