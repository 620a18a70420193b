"""Empirical moments of intermediate tensors with ONNX Runtime: the check of ``propagate``."""
from __future__ import annotations

import numpy as np
import onnx

from .errors import OnnxInitError


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


def gaussian_feeds(model: onnx.ModelProto, batch: int, rng: np.random.Generator, mean=0.0, var=1.0):
    """N(mean, var) for every float graph input, symbolic dims set to ``batch``."""
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = (mean + np.sqrt(var) * rng.standard_normal(shape)).astype(dtype)
    return feeds


def measure(model: onnx.ModelProto, names, feeds: dict) -> dict:
    """{name: (mean, var)} over all elements of each named tensor, one ONNX Runtime run."""
    ort = _runtime()
    names = list(names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(with_outputs(model, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values = session.run(names, feeds)
    return {n: (float(np.mean(v, dtype=np.float64)), float(np.var(v, dtype=np.float64)))
            for n, v in zip(names, values)}
