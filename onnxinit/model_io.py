"""Load and write ONNX models: external data checked and read, output written atomically."""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from itertools import chain
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .errors import OnnxInitError
from .proto_stream import write_model
from .validate import check_model, tensor_bytes

TWO_GB = 2**31
EXTERNAL_THRESHOLD = 1024  # tensors at least this many bytes go to the data file


def _tensors_with_external_data(model: onnx.ModelProto):
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def check_external_data(model: onnx.ModelProto, model_dir: Path) -> None:
    """Refuse external data that escapes the model's folder, is missing, or is short."""
    root = model_dir.resolve()
    for tensor in _tensors_with_external_data(model):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise OnnxInitError(f"tensor {tensor.name!r}: external data has no location")
        if os.path.isabs(location):
            raise OnnxInitError(f"tensor {tensor.name!r}: external data location {location!r} is absolute; "
                                "it must be a path inside the model's folder")
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise OnnxInitError(f"tensor {tensor.name!r}: external data location {location!r} "
                                f"resolves outside the model's folder {root}")
        if not target.is_file():
            raise OnnxInitError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        needed = tensor_bytes(tensor)
        if length is not None and needed is not None and int(length) != needed:
            raise OnnxInitError(f"tensor {tensor.name!r}: external data length {int(length)} in {location!r} "
                                f"does not match its dims {list(tensor.dims)} ({needed} bytes)")
        needed = int(length) if length is not None else needed
        size = target.stat().st_size
        if needed is not None and offset + needed > size:
            raise OnnxInitError(f"tensor {tensor.name!r}: external data file {location!r} is too short "
                                f"({size} bytes, needs {offset + needed})")


def external_data_files(path) -> set:
    """Resolved paths of the external data files the model at ``path`` refers to (none if
    it cannot be parsed: load_model says why)."""
    path = Path(path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, RuntimeError, OSError):
        return set()
    root = path.parent.resolve()
    return {(root / e.value).resolve() for t in _tensors_with_external_data(model) for e in t.external_data
            if e.key == "location" and e.value}


def load_model(path, lazy: bool = False) -> onnx.ModelProto:
    """Parse ``path`` and read its external data (checked to stay inside the model's folder).

    ``lazy``: leave external payloads on disk; their locations become absolute paths (in
    memory only), read one tensor at a time (read_deferred) and copied straight to the
    output by save_model. For models that must not be held in memory twice; such a model
    is for Graph and save_model only (ONNX Runtime refuses absolute locations)."""
    path = Path(path)
    streamed = str(path) == "-" or is_stream(path)
    if not streamed and not path.exists():
        raise OnnxInitError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxInitError(f"{path}: is a directory, expected an .onnx file")
    if not streamed and path.stat().st_size == 0:
        raise OnnxInitError(f"{path}: file is empty")
    try:
        if streamed:   # "-" (standard input), /dev/stdin, a named pipe: read once, to the end
            data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
            if not data:
                raise OnnxInitError(f"{path}: no bytes to read")
            model = onnx.load_model_from_string(data)
        else:
            model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, RuntimeError) as exc:
        raise OnnxInitError(f"{path}: not a valid ONNX model ({exc.__class__.__name__}: {exc})") from exc
    if streamed:
        if any(True for _ in _tensors_with_external_data(model)):
            raise OnnxInitError(f"{path}: the model keeps tensors in external data files, which a model read "
                                "from a stream cannot locate; pass its file path")
        check_model(model, path)
        return model
    if not model.HasField("graph") or (not model.graph.node and not model.graph.initializer):
        raise OnnxInitError(f"{path}: not an ONNX model (no graph)")
    check_model(model, path)
    check_external_data(model, path.parent)
    if lazy:
        root = path.parent.resolve()
        for tensor in _tensors_with_external_data(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = str((root / entry.value).resolve())
        return model
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise OnnxInitError(f"{path}: cannot read external data ({exc})") from exc
    return model


def is_deferred(tensor: onnx.TensorProto) -> bool:
    """A payload left on disk by load_model(lazy=True) or written to a Spill."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and os.path.isabs(e.value) for e in tensor.external_data)


def _extent(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    info = {e.key: e.value for e in tensor.external_data}
    offset = int(info.get("offset", 0) or 0)
    length = info.get("length")
    size = int(length) if length is not None else os.path.getsize(info["location"]) - offset
    return info["location"], offset, size


def read_deferred(tensor: onnx.TensorProto) -> bytes:
    """The payload bytes of a deferred tensor."""
    location, offset, size = _extent(tensor)
    with open(location, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OnnxInitError(f"tensor {tensor.name!r}: external data file {location!r} is too short")
    return data


def deferred_array(tensor: onnx.TensorProto):
    """numpy value of a deferred tensor (read now, not kept)."""
    from onnx import numpy_helper
    inline = onnx.TensorProto()
    inline.name, inline.data_type = tensor.name, tensor.data_type
    inline.dims.extend(tensor.dims)
    inline.raw_data = read_deferred(tensor)
    return numpy_helper.to_array(inline)


def set_inline(tensor: onnx.TensorProto, raw: bytes) -> None:
    """Give ``tensor`` this payload in raw_data, dropping any other payload field or reference.
    A tensor that was inline keeps its data_location field as it was (set or not): its bytes
    then change in the payload only."""
    for f in ("float_data", "double_data", "int32_data", "int64_data", "raw_data", "external_data"):
        tensor.ClearField(f)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor.ClearField("data_location")
    tensor.raw_data = raw


class Spill:
    """A temporary payload file in the output's folder: drawn weights of large models go here
    instead of into the model, so the model is never held in memory. Removed on close."""

    MIN_BYTES = 1 << 20

    def __init__(self, folder: Path):
        fd, name = tempfile.mkstemp(prefix=".onnxinit-", suffix=".spill", dir=folder)
        self.path = Path(name).resolve()
        self.file = os.fdopen(fd, "wb")

    def write(self, tensor: onnx.TensorProto, value) -> None:
        """Store ``value`` (already in the tensor's dtype and shape) as ``tensor``'s payload."""
        offset = self.file.tell()
        value.tofile(self.file)
        self.file.flush()
        for f in ("float_data", "double_data", "int32_data", "int64_data", "raw_data", "external_data"):
            tensor.ClearField(f)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, v in (("location", str(self.path)), ("offset", str(offset)), ("length", str(value.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, v

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def spill_for(output: Path):
    """A Spill beside ``output``, or none (a context giving None) when ``output`` is a stream."""
    return nullcontext() if is_stream(output) else Spill(output.parent if str(output.parent) else Path("."))


def payload_bytes(model: onnx.ModelProto) -> int:
    """Bytes held in tensor payloads, deferred ones included (what decides the 2 GB protobuf limit)."""
    total = 0
    for tensor in external_data_helper._get_all_tensors(model):
        if is_deferred(tensor):
            total += _extent(tensor)[2]
            continue
        total += len(tensor.raw_data) + 4 * (len(tensor.float_data) + len(tensor.int32_data)) \
            + 8 * (len(tensor.int64_data) + len(tensor.double_data))
    return total


def data_file_name(output: Path) -> str:
    return output.name + ".data"


def publish(tmp, destination) -> None:
    """Rename a finished temp file onto ``destination`` with the permissions a new file gets
    under the umask (mkstemp makes it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, destination)


def is_stream(path) -> bool:
    """An output path that exists and is neither a regular file nor a folder (/dev/null,
    /dev/stdout, a named pipe): it is written in place, since a rename would replace the
    device or pipe itself with a file."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextmanager
def atomic_output(path, suffix: str = "", mode: str = "wb"):
    """A file to write ``path``'s content to: a temp file in its folder, renamed onto ``path``
    when the block ends without error and removed otherwise; a stream (is_stream) directly."""
    path = Path(path)
    if is_stream(path):
        with open(path, mode) as out:
            yield out
        return
    folder = path.parent if str(path.parent) else Path(".")
    with _temp_in(folder, suffix) as tmp:
        with open(tmp, mode) as out:
            yield out
        publish(tmp, path)


@contextmanager
def _temp_in(folder: Path, suffix: str):
    fd, name = tempfile.mkstemp(prefix=".onnxinit-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _serialize_with_external_data(model: onnx.ModelProto, data_path: Path, location: str) -> bytes:
    """Model bytes with large initializers' payloads in ``data_path``; ``model`` is not touched.

    Payloads are streamed to the file one tensor at a time, and the bytes are
    those of a copy of the model made field by field, whose large initializers
    carry only their external-data references: no second copy of the weights.
    """
    light = onnx.ModelProto()
    for field_name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field_name, getattr(model, field_name))
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    if model.training_info:
        light.training_info.extend(model.training_info)
    graph, source = light.graph, model.graph
    for field_name in ("name", "doc_string"):
        setattr(graph, field_name, getattr(source, field_name))
    for field_name in ("node", "input", "output", "value_info", "quantization_annotation", "sparse_initializer"):
        getattr(graph, field_name).extend(getattr(source, field_name))
    with open(data_path, "wb") as data:
        for tensor in source.initializer:
            deferred = is_deferred(tensor)
            size = _extent(tensor)[2] if deferred else len(tensor.raw_data) if tensor.HasField("raw_data") else 0
            if size < EXTERNAL_THRESHOLD and not deferred:
                graph.initializer.append(tensor)
                continue
            offset = data.tell()
            if deferred:
                _copy_deferred(tensor, data)
            else:
                data.write(tensor.raw_data)
            data.write(b"\0" * ((-data.tell()) % 64))
            ref = graph.initializer.add()
            ref.name, ref.data_type, ref.doc_string = tensor.name, tensor.data_type, tensor.doc_string
            ref.dims.extend(tensor.dims)
            ref.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(size))):
                entry = ref.external_data.add()
                entry.key, entry.value = key, value
    return light.SerializeToString()


def _copy_deferred(tensor: onnx.TensorProto, out, chunk: int = 64 << 20) -> None:
    """Copy a deferred payload into ``out`` in chunks (never the whole tensor in memory)."""
    location, offset, size = _extent(tensor)
    with open(location, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            block = f.read(min(chunk, left))
            if not block:
                raise OnnxInitError(f"tensor {tensor.name!r}: external data file {location!r} is too short")
            out.write(block)
            left -= len(block)


def _inline_deferred(model: onnx.ModelProto, initializers: bool = True) -> None:
    """Read deferred payloads into the model: all, or (``initializers=False``) all but the
    top-level graph initializers, which the external-data writer copies itself."""
    skip = 0 if initializers else len(model.graph.initializer)   # they come first
    tensors = chain(external_data_helper._get_initializer_tensors(model),
                    external_data_helper._get_attribute_tensors(model))
    for i, tensor in enumerate(tensors):
        if i >= skip and is_deferred(tensor):
            set_inline(tensor, read_deferred(tensor))


def save_model(model: onnx.ModelProto, output, external_data: bool | None = None) -> list[Path]:
    """Write ``model`` to ``output`` atomically (temp file in the same folder, then rename).

    With ``external_data`` (default: when payloads exceed 2 GB) tensor payloads go to
    ``<output>.data`` beside it. Returns the paths written.
    """
    output = Path(output)
    folder = output.parent if str(output.parent) else Path(".")
    if is_stream(output):
        if external_data:
            raise OnnxInitError(f"{output}: not a regular file; a model with external data needs a file path")
        _inline_deferred(model)
        with atomic_output(output) as out:
            write_model(model, out)
        return [output]
    if not folder.is_dir():
        raise OnnxInitError(f"{output}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxInitError(f"{output}: output folder {folder} is not writable")
    if output.is_dir():
        raise OnnxInitError(f"{output}: is a directory")
    if external_data is None:
        external_data = payload_bytes(model) >= TWO_GB - (64 << 20)
    with _temp_in(folder, ".onnx") as tmp_model:
        if not external_data:
            _inline_deferred(model)
            with open(tmp_model, "wb") as out:
                write_model(model, out)
            publish(tmp_model, output)
            return [output]
        location = data_file_name(output)
        _inline_deferred(model, initializers=False)
        with _temp_in(folder, ".data") as tmp_data:
            tmp_model.write_bytes(_serialize_with_external_data(model, tmp_data, location))
            publish(tmp_data, folder / location)
            publish(tmp_model, output)
    return [output, folder / location]
