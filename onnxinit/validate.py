"""Refuse a model that is not valid ONNX before any work: the ONNX checker's verdict on the
graph (op schemas, attributes, single assignment, IR version), every node input defined,
opsets no newer than the installed onnx knows, and every inline tensor holding as many
values as its dims declare (absurd dims are refused here, before anything is allocated).

The checker runs on a skeleton of the model: every initializer a typed graph input, so a
model is neither serialized nor copied whole and external data is not read; a graph input
or output whose type has no shape passes (as in ONNX Runtime). Node order is not required:
ONNX asks for topological order, but a graph whose nodes are merely out of order is
accepted (Graph sorts it; a cycle is refused there).
"""
from __future__ import annotations

import math

import onnx
from onnx import helper

from .errors import OnnxInitError

_STANDARD_DOMAINS = {"": 2, "ai.onnx": 2, "ai.onnx.ml": 3, "ai.onnx.training": 4}   # column in VERSION_TABLE
_UNSORTED = "Nodes in a graph must be topologically sorted"


def known_opsets() -> dict:
    """The newest opset per standard domain that the installed onnx defines."""
    newest = helper.VERSION_TABLE[-1]
    return {domain: newest[column] for domain, column in _STANDARD_DOMAINS.items()}


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every initializer a typed input: what the checker needs, no payload."""
    from .graph import model_shell
    skeleton = model_shell(model, {t.name for t in model.graph.initializer})
    for info in [*skeleton.graph.input, *skeleton.graph.output, *skeleton.graph.value_info]:
        if info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape"):
            info.type.tensor_type.shape.SetInParent()   # a declared type without a shape: ONNX Runtime takes it
    return skeleton


_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's dims and type need (4-bit types packed two to a byte); None for strings
    and unknown types."""
    count = math.prod(int(d) for d in tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    return count * itemsize


def _check_inline(tensor: onnx.TensorProto, source) -> None:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return   # model_io.check_external_data compares it with its file
    count = math.prod(int(d) for d in tensor.dims)
    if any(int(d) < 0 for d in tensor.dims):
        raise OnnxInitError(f"{source}: tensor {tensor.name!r} has negative dims {list(tensor.dims)}")
    if tensor.HasField("raw_data"):
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            what = "strings" if tensor.data_type else "data of no type"
            raise OnnxInitError(f"{source}: tensor {tensor.name!r} stores {what} in raw bytes")
        needed = tensor_bytes(tensor)
        if needed is not None and len(tensor.raw_data) != needed:
            raise OnnxInitError(f"{source}: tensor {tensor.name!r} holds {len(tensor.raw_data)} bytes, its dims "
                                f"{list(tensor.dims)} need {needed}")
        return
    held = sum(len(getattr(tensor, field)) for field in _FIELDS)
    if held < (count + 1) // 2:
        raise OnnxInitError(f"{source}: tensor {tensor.name!r} holds {held} values, its dims {list(tensor.dims)} "
                            f"declare {count}")


def _constant_tensors(graph: onnx.GraphProto):
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def _undefined_input(graph: onnx.GraphProto) -> tuple[str, str] | None:
    """(input, node) of the first node input no node, initializer or graph input defines."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    defined |= {out for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                return name, node.name or node.op_type
    return None


def check_model(model: onnx.ModelProto, source) -> None:
    """Raise OnnxInitError naming ``source`` and the first problem found."""
    known = known_opsets()
    for opset in model.opset_import:
        newest = known.get(opset.domain)
        if newest is not None and opset.version > newest:
            raise OnnxInitError(f"{source}: opset {opset.version} of domain {opset.domain or 'ai.onnx'!r} is newer "
                                f"than the installed onnx {onnx.__version__} knows ({newest}); upgrade onnx")
    for tensor in [*model.graph.initializer, *_constant_tensors(model.graph)]:
        _check_inline(tensor, source)
    undefined = _undefined_input(model.graph)
    if undefined:
        raise OnnxInitError(f"{source}: input {undefined[0]!r} of node {undefined[1]!r} is not produced by any "
                            "node, initializer or graph input")
    try:
        onnx.checker.check_model(_skeleton(model))
    except onnx.checker.ValidationError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if message.startswith(_UNSORTED):
            return   # every input is defined (above): only out of order, or a cycle Graph refuses
        raise OnnxInitError(f"{source}: not a valid ONNX model (the ONNX checker: {message})") from exc
