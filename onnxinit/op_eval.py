"""Run one ONNX node on numpy arrays with ``onnx.reference`` (no ONNX Runtime needed)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator


def _standalone(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node with its inputs renamed i0, i1, ... and outputs o0, o1, ..."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = ""
    del copy.input[:]
    copy.input.extend(f"i{i}" if name else "" for i, name in enumerate(node.input))
    del copy.output[:]
    copy.output.extend(f"o{i}" if name else "" for i, name in enumerate(node.output))
    return copy


@lru_cache(maxsize=512)
def _evaluator(node_bytes: bytes, opsets: tuple) -> ReferenceEvaluator:
    node = onnx.NodeProto.FromString(node_bytes)
    inputs = [helper.make_value_info(n, onnx.TypeProto()) for n in node.input if n]
    outputs = [helper.make_value_info(n, onnx.TypeProto()) for n in node.output if n]
    graph = helper.make_graph([node], "one_node", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    return ReferenceEvaluator(model)


def _gather_elements(node, inputs):
    """GatherElements: out[i][j][k] = data[index[i][j][k]][j][k] along ``axis`` (the reference's
    version fails beyond 64 distinct indices)."""
    data, index = np.asarray(inputs[0]), np.asarray(inputs[1], np.int64)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % data.ndim
    index = np.where(index < 0, index + data.shape[axis], index)
    return [np.take_along_axis(data, index, axis=axis)]


OVERRIDES = {"GatherElements": _gather_elements}


def run_node(node: onnx.NodeProto, inputs: list, opsets: dict) -> list:
    """Outputs of ``node`` for the given input arrays (None for an omitted optional input)."""
    if node.domain in ("", "ai.onnx") and node.op_type in OVERRIDES and all(a is not None for a in inputs[:2]):
        return OVERRIDES[node.op_type](node, inputs)
    standalone = _standalone(node)
    domain = node.domain or ""
    versions = tuple(sorted((d, v) for d, v in opsets.items() if d in ("", domain)))
    evaluator = _evaluator(standalone.SerializeToString(), versions)
    feeds = {f"i{i}": np.asarray(a) for i, a in enumerate(inputs) if a is not None and node.input[i]}
    return evaluator.run(None, feeds)


def too_large(node, values, limit: int) -> bool:
    """Would an op that makes arrays from shape values (Range, ConstantOfShape, Expand, Tile) exceed limit?"""
    try:
        if node.op_type == "ConstantOfShape" and values and values[0] is not None:
            return float(np.prod(np.asarray(values[0], np.float64))) > limit
        if node.op_type == "Range" and len(values) == 3 and all(v is not None for v in values):
            start, stop, step = (float(np.asarray(v).reshape(-1)[0]) for v in values)
            return step == 0 or abs((stop - start) / step) > limit
        if node.op_type == "Expand" and len(values) == 2 and all(v is not None for v in values):
            shape = np.broadcast_shapes(np.shape(values[0]), tuple(int(d) for d in np.asarray(values[1]).reshape(-1)))
            return float(np.prod(shape, dtype=np.float64)) > limit
        if node.op_type == "Tile" and len(values) == 2 and all(v is not None for v in values):
            return float(np.size(values[0])) * float(np.prod(np.asarray(values[1], np.float64))) > limit
    except (ValueError, TypeError, OverflowError):
        return True
    return False
