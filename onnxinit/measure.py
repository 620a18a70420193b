"""Empirical moments of intermediate tensors with ONNX Runtime: the check of ``propagate``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxInitError
from .graph import symbolic_dim_names, symbolic_size


def _runtime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxInitError("measuring needs ONNX Runtime: pip install 'onnxinit[ort]'") from exc
    return onnxruntime


def with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


RANDOM_OPS = {"Dropout", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Bernoulli", "Multinomial"}


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def seed_random_ops(graph: onnx.GraphProto, opset: int, seed: int = 0) -> list:
    """Give every random op without a ``seed`` attribute a fixed one, so measurements repeat.

    ONNX Runtime otherwise draws a training-mode Dropout's mask from a process-wide
    generator: the same model measured twice would give different moments.
    Dropout has the attribute from opset 12. Returns the nodes changed, for ``unseed_random_ops``.
    """
    added = []
    for index, node in enumerate(graph.node):
        if node.domain in ("", "ai.onnx") and node.op_type in RANDOM_OPS and \
                not (node.op_type == "Dropout" and opset < 12) and \
                not any(a.name == "seed" for a in node.attribute):
            value = float(seed + index) if node.op_type != "Dropout" else seed + index
            node.attribute.append(onnx.helper.make_attribute("seed", value))
            added.append(node)
    return added


def unseed_random_ops(nodes) -> None:
    """Remove the ``seed`` attributes ``seed_random_ops`` added."""
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "seed"]
        del node.attribute[:]
        node.attribute.extend(kept)


PASS_IDS = {"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Expand"}


def index_range(model: onnx.ModelProto, name: str) -> int | None:
    """Token ids: the row count of a table the input indexes with Gather (through casts and
    reshapes); None when it indexes none (a mask)."""
    tables = {t.name: t for t in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for i, n in enumerate(node.input):
            consumers.setdefault(n, []).append((node, i))
    frontier, seen = [name], set()
    while frontier:
        current = frontier.pop()
        seen.add(current)
        for node, i in consumers.get(current, []):
            if node.op_type == "Gather" and i == 1 and node.input[0] in tables:
                return max(int(tables[node.input[0]].dims[0]), 1)
            if node.op_type in PASS_IDS and i == 0 and node.output[0] not in seen:
                frontier.append(node.output[0])
    return None


def gaussian_feeds(model: onnx.ModelProto, batch: int, rng: np.random.Generator, mean=0.0, var=1.0,
                   sizes: dict | None = None):
    """N(mean, var) for every float graph input; a symbolic first dim = ``batch``, any other
    symbolic dim the size the analysis takes (``sizes`` by name, else graph.SYMBOLIC_DIM).

    An integer input that indexes an embedding table gets uniform token ids; any other
    integer or bool input is taken for a mask and set to ones (nothing masked out), as
    propagation assumes.
    """
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                 batch if axis == 0 else symbolic_size(d, sizes) for axis, d in enumerate(tt.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            rows = index_range(model, vi.name)
            feeds[vi.name] = np.ones(shape, dtype) if rows is None else rng.integers(0, rows, shape).astype(dtype)
        else:
            feeds[vi.name] = np.asarray(mean + np.sqrt(var) * rng.standard_normal(shape)).astype(dtype)
    return feeds


def data_feeds(model: onnx.ModelProto, path, input_map: dict | None = None, limit: int | None = None) -> dict:
    """Inputs from an .npz file: arrays by graph input name, or by ``input_map`` {input: key};
    a lone array feeds a lone input. ``limit`` keeps the first rows of each array."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OnnxInitError(f"{path}: cannot read input data ({exc})") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    arrays = dict(archive.items()) if hasattr(archive, "items") else {"": archive}
    input_map = dict(input_map or {})
    unknown = sorted(set(input_map) - {vi.name for vi in inputs})
    if unknown:
        raise OnnxInitError(f"--input names {unknown} are not inputs of the model "
                            f"(inputs: {[vi.name for vi in inputs]})")
    if len(inputs) == 1 and len(arrays) == 1 and not input_map:
        input_map = {inputs[0].name: next(iter(arrays))}
    feeds = {}
    for vi in inputs:
        key = input_map.get(vi.name, vi.name)
        if key not in arrays:
            raise OnnxInitError(f"{path}: no array named {key!r} for input {vi.name!r} (has {sorted(arrays)}); "
                                "map one with --input NAME=KEY")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        value = np.asarray(arrays[key])
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise OnnxInitError(f"{path}: array {key!r} holds NaN or infinite values")
        if value.dtype.kind not in "fiub":
            raise OnnxInitError(f"{path}: array {key!r} is not numeric ({value.dtype})")
        if value.ndim and len(value) == 0:
            raise OnnxInitError(f"{path}: array {key!r} has no rows")
        _check_shape(path, key, vi, value.shape)
        feeds[vi.name] = value[:limit] if limit and value.ndim else value
        feeds[vi.name] = feeds[vi.name].astype(dtype, copy=False)
    return feeds


def _check_shape(path, key, vi, shape) -> None:
    """The array has the input's rank and its fixed sizes after the batch axis."""
    if not vi.type.tensor_type.HasField("shape"):
        return
    dims = vi.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    wanted = "(" + ", ".join(str(d) if d else "?" for d in declared) + ")"
    if len(shape) != len(declared) or any(d and s != d for d, s in zip(declared[1:], shape[1:])):
        raise OnnxInitError(f"{path}: array {key!r} has shape {tuple(shape)}; input {vi.name!r} takes {wanted}")


def providers(device: str = "auto") -> list:
    """CUDA first when it is there (and asked for or allowed), then CPU."""
    ort = _runtime()
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise OnnxInitError("--device cuda: this ONNX Runtime has no CUDAExecutionProvider "
                            "(install onnxruntime-gpu)")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_FED = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}
FEED_BYTES = 1024   # float initializers at least this large are fed at run time, not serialized


def _fed_weights(model: onnx.ModelProto) -> dict:
    """{name: array over its payload bytes} for the large inline float initializers."""
    fed = {}
    for t in model.graph.initializer:
        dtype = _FED.get(t.data_type)
        if dtype is None or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        raw = t.raw_data   # one bytes object per tensor, read once
        if len(raw) >= FEED_BYTES:
            fed[t.name] = np.frombuffer(raw, dtype).reshape(tuple(int(d) for d in t.dims))
    return fed


def _light(model: onnx.ModelProto, fed: dict, names) -> onnx.ModelProto:
    """The graph with ``names`` as extra outputs and the ``fed`` initializers turned into graph
    inputs: the weights are handed to ONNX Runtime as arrays, never serialized."""
    from .graph import model_shell
    return with_outputs(model_shell(model, set(fed)), names)


def _session_source(model: onnx.ModelProto, names, model_path):
    """Serialized model with the extra outputs, the folder its external data is read from,
    and the weights to feed with the inputs.

    A model stored with external data is re-read without its payloads, so ONNX Runtime
    reads them from disk. Otherwise the large float weights become graph inputs fed as
    arrays over their payload bytes: the model is not serialized and parsed again (which
    cost more than the forward pass's share on a ResNet-50).
    """
    if model_path and Path(model_path).is_file():
        light = onnx.load_model(str(model_path), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in light.graph.initializer):
            if [list(n.output) for n in light.graph.node] == [list(n.output) for n in model.graph.node]:
                seed_random_ops(light.graph, default_opset(light))
                return with_outputs(light, names).SerializeToString(), str(Path(model_path).resolve().parent), {}
    fed = _fed_weights(model)
    light = _light(model, fed, names)
    seed_random_ops(light.graph, default_opset(light))
    return light.SerializeToString(), None, fed


def measure(model: onnx.ModelProto, names, feeds: dict, model_path=None, device: str = "auto") -> dict:
    """{name: (mean, var)} over all elements of each named tensor, one ONNX Runtime run."""
    ort = _runtime()
    names = list(names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source, folder, weights = _session_source(model, names, model_path)
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    try:
        session = ort.InferenceSession(source, options, providers=providers(device))
        values = session.run(names, {**feeds, **weights})
    except OnnxInitError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refuses the model or the data
        dynamic = sorted(symbolic_dim_names(model))
        hint = f" (dynamic dims {', '.join(dynamic)} were fed as sized by --dim NAME=SIZE, default 16)" \
            if dynamic else ""
        raise OnnxInitError(f"ONNX Runtime could not run the model: {str(exc).splitlines()[0]}{hint}") from exc
    return {n: _mean_var(v) for n, v in zip(names, values)}


def _mean_var(v: np.ndarray) -> tuple:
    """Mean and variance in one pass over the data (sum in float64, sum of squares by BLAS)."""
    flat = np.ascontiguousarray(v).reshape(-1)
    if flat.size == 0:
        return float("nan"), float("nan")
    if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32)
    mean = float(flat.sum(dtype=np.float64)) / flat.size
    chunk = 1 << 20   # float32 dot products per chunk, summed in float64
    second = sum(float(np.dot(flat[i:i + chunk], flat[i:i + chunk])) for i in range(0, flat.size, chunk)) / flat.size
    return mean, max(second - mean * mean, 0.0)
