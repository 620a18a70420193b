"""`onnxinit export-weights`: every float initializer to .safetensors or .npz, with the names
the source framework gave them where the exporter left them in the graph.

Source names (PyTorch's state_dict keys) are found three ways, in this order:
* the initializer already carries one (``layer1.0.conv1.weight``): PyTorch keeps parameter
  names for the tensors it feeds to nodes unchanged;
* a weight the exporter renamed (``onnx::MatMul_123``, a Linear's weight stored transposed for
  MatMul) whose MatMul output goes into an Add with a bias named ``<module>.bias``: it is
  ``<module>.weight``, transposed back to (out, in);
* otherwise, a MatMul's node name ``/blocks/blocks.1/fc1/MatMul`` gives the module path
  ``blocks.1.fc1``.
Tensors the exporter computed (BatchNorm folded into a Conv: ``onnx::Conv_45``) have no source
name; they are kept under their ONNX name and listed as unmapped.

``names="onnx"`` writes tensors by ONNX name in ONNX layout and stores the mapping in the file
(safetensors ``__metadata__`` / npz ``__mapping__`` as JSON); ``names="source"`` writes mapped
tensors by source name in the source layout (loadable by ``model.load_state_dict``), unmapped
ones by their ONNX name.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxInitError
from .graph import FLOAT_TYPES, Graph
from .model_io import atomic_output

PARAMETER_NAME = re.compile(r"^\w+(\.\w+)*$")
SAFETENSORS_DTYPES = {onnx.TensorProto.FLOAT: "F32", onnx.TensorProto.FLOAT16: "F16",
                      onnx.TensorProto.BFLOAT16: "BF16", onnx.TensorProto.DOUBLE: "F64"}
FORMATS = (".safetensors", ".npz")


@dataclass
class Entry:
    onnx_name: str
    source_name: str | None
    transpose: bool             # source layout = ONNX layout transposed (a Linear weight under MatMul)
    how: str                    # kept | bias | scope | unmapped

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _module_path(node_name: str) -> str | None:
    """``/blocks/blocks.1/fc1/MatMul`` -> ``blocks.1.fc1``; each scope segment either extends
    the previous one (``blocks`` -> ``blocks.1``) or names a child module."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        return None
    path = parts[0]
    for part in parts[1:]:
        path = part if part.startswith(path + ".") else f"{path}.{part}"
    return path if PARAMETER_NAME.match(path) else None


def _renamed_matmul_weight(name: str, graph: Graph):
    """(source name, how) of a renamed weight feeding one MatMul as its second input."""
    users = graph.consumers.get(name, [])
    if len(users) != 1 or users[0].op_type != "MatMul" or list(users[0].input).index(name) != 1:
        return None
    matmul = users[0]
    tensor = graph.initializers[name]
    if len(tensor.dims) != 2:
        return None
    for add in graph.consumers.get(matmul.output[0], []):
        if add.op_type == "Add":
            for other in add.input:
                if other.endswith(".bias") and other in graph.initializers and \
                        list(graph.initializers[other].dims) == [tensor.dims[1]]:
                    return other[: -len(".bias")] + ".weight", "bias"
    path = _module_path(matmul.name or "")
    return (path + ".weight", "scope") if path else None


def source_names(model: onnx.ModelProto) -> list[Entry]:
    """One entry per float initializer, in the model's order."""
    graph = Graph(model)
    entries, taken = [], set()
    floats = [t for t in model.graph.initializer if t.data_type in FLOAT_TYPES]
    for t in floats:
        if not t.name.startswith("onnx::") and PARAMETER_NAME.match(t.name):
            taken.add(t.name)
    for t in floats:
        if t.name in taken:
            entries.append(Entry(t.name, t.name, False, "kept"))
            continue
        found = _renamed_matmul_weight(t.name, graph)
        if found and found[0] not in taken:
            taken.add(found[0])
            entries.append(Entry(t.name, found[0], True, found[1]))
        else:
            entries.append(Entry(t.name, None, False, "unmapped"))
    return entries


def _tensor_bytes(tensor: onnx.TensorProto, transpose: bool) -> tuple[bytes, list]:
    """Raw little-endian bytes in the tensor's own dtype (bfloat16 kept as its 16 bits)."""
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        if tensor.HasField("raw_data"):
            array = np.frombuffer(tensor.raw_data, dtype="<u2").reshape(tuple(tensor.dims))
        else:
            array = np.asarray(tensor.int32_data, dtype=np.uint16).reshape(tuple(tensor.dims))
    else:
        array = numpy_helper.to_array(tensor)
    if transpose:
        array = array.T
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(), list(array.shape)


def _safetensors(items, metadata: dict) -> bytes:
    """The safetensors format: 8-byte header length, JSON header, then the tensors' bytes."""
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for key, (dtype, shape, data) in items.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _npz_array(dtype: int, shape: list, data: bytes) -> np.ndarray:
    """bfloat16 has no numpy dtype: its 16 bits are stored as uint16."""
    np_dtype = np.uint16 if dtype == onnx.TensorProto.BFLOAT16 else onnx.helper.tensor_dtype_to_np_dtype(dtype)
    return np.frombuffer(data, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(shape)


def export_weights(model: onnx.ModelProto, output, names: str = "onnx") -> list[Entry]:
    """Write the float initializers of ``model`` to ``output`` (.safetensors or .npz), atomically."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise OnnxInitError(f"{output}: the output must end in .safetensors or .npz")
    if names not in ("onnx", "source"):
        raise OnnxInitError(f"names must be 'onnx' or 'source', not {names!r}")
    if not output.parent.is_dir():
        raise OnnxInitError(f"{output.parent}: no such folder")
    entries = source_names(model)
    if not entries:
        raise OnnxInitError("the model has no float initializers to export")
    tensors = {t.name: t for t in model.graph.initializer}
    items = {}
    for e in entries:
        by_source = names == "source" and e.source_name
        data, shape = _tensor_bytes(tensors[e.onnx_name], e.transpose and by_source)
        items[e.source_name if by_source else e.onnx_name] = (tensors[e.onnx_name].data_type, shape, data)
    mapping = json.dumps([e.as_dict() for e in entries])
    with atomic_output(output, suffix) as f:
        if suffix == ".safetensors":
            f.write(_safetensors({k: (SAFETENSORS_DTYPES[t], s, d) for k, (t, s, d) in items.items()},
                                 {"format": "pt", "onnxinit.names": names, "onnxinit.mapping": mapping}))
        else:
            np.savez(f, __mapping__=np.array(mapping), **{k: _npz_array(*item) for k, item in items.items()})
    return entries
