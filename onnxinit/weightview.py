"""Weights that reach their layer through ops that only move elements: W = P(source).

Exports that skip constant folding (PyTorch's training mode, ``do_constant_folding=False``)
feed a Linear's weight as ``MatMul(x, Transpose(weight))``; converters add Reshape,
Squeeze / Unsqueeze, Flatten, Identity or a float-to-float Cast. Such a chain from one
float initializer (or Constant) is a permutation P of the source's elements, a
sequence of transposes and C-order reshapes:

    W = reshape / transpose ... (source)

A new W for the layer is written back through the inverse steps in reverse order
(transpose by the inverse permutation, reshape to the shape before), in the source's
own dtype, so the layer computes exactly W.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .op_eval import run_node

# Ops that move elements without changing them (Cast only between float types).
VIEW_OPS = {"Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
MAX_CHAIN = 16


@dataclass(frozen=True)
class WeightView:
    output: str                 # the tensor the layer reads
    source: str                 # the initializer (or Constant output) holding the payload
    steps: tuple                # ("transpose", perm) or ("reshape", shape), source to output
    shape: tuple                # W's shape
    dtype: np.dtype             # W's dtype (after any Cast)

    def evaluate(self, graph) -> np.ndarray | None:
        """W from the source's current values."""
        value = graph.constant_value(self.source)
        if value is None:
            return None
        w = np.asarray(value)
        for kind, arg in self.steps:
            w = np.transpose(w, arg) if kind == "transpose" else w.reshape(arg)
        return np.ascontiguousarray(w).astype(self.dtype, copy=False)

    def write(self, graph, w: np.ndarray) -> None:
        """Store ``w`` as the layer's weight by writing the source (the steps undone in reverse)."""
        dims = tuple(int(d) for d in graph.weight_tensor(self.source).dims)
        shapes = [dims]
        for kind, arg in self.steps:
            shapes.append(tuple(shapes[-1][p] for p in arg) if kind == "transpose" else tuple(arg))
        source = np.asarray(w).reshape(self.shape)
        for (kind, arg), before in zip(reversed(self.steps), reversed(shapes[:-1])):
            source = np.transpose(source, np.argsort(arg)) if kind == "transpose" else source.reshape(before)
        graph.replace_payload(self.source, np.ascontiguousarray(source))


def detect(graph, name: str) -> WeightView | None:
    """The view computing ``name`` from one weight tensor through VIEW_OPS, or None."""
    chain, top = [], name
    while (node := graph.producer.get(top)) is not None and len(chain) < MAX_CHAIN:
        if node.op_type not in VIEW_OPS or node.domain not in ("", "ai.onnx") or node.output[0] != top:
            return None
        if node.op_type == "Cast" and next((a.i for a in node.attribute if a.name == "to"), None) not in FLOATS:
            return None
        if any(n and graph.constant_value(n) is None for n in node.input[1:]):
            return None    # a shape or axes computed at run time
        chain.append(node)
        top = node.input[0]
    tensor = graph.weight_tensor(top)
    if not chain or tensor is None or tensor.data_type not in FLOATS:
        return None
    shape = tuple(int(d) for d in tensor.dims)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    steps = []
    for node in reversed(chain):
        if node.op_type == "Cast":
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(next(a.i for a in node.attribute if a.name == "to")))
        elif node.op_type == "Transpose":
            perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), tuple(range(len(shape)))[::-1])
            if sorted(perm) != list(range(len(shape))):
                return None
            steps.append(("transpose", perm))
            shape = tuple(shape[p] for p in perm)
        elif node.op_type != "Identity":
            try:   # a reshape in C order: only the output shape matters, found on a one-byte stand-in
                probe = np.zeros(shape, np.int8)
                inputs = [probe] + [graph.constant_value(n) if n else None for n in node.input[1:]]
                out = np.asarray(run_node(node, inputs, graph.opsets)[0])
            except Exception:  # noqa: BLE001 - the reference cannot run it on these inputs: not a view
                return None
            if out.size != probe.size:
                return None
            steps.append(("reshape", tuple(int(d) for d in out.shape)))
            shape = tuple(int(d) for d in out.shape)
    return WeightView(name, top, tuple(steps), shape, dtype)
