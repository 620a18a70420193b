"""`--mode empirical`: each weighted layer's scale measured with ONNX Runtime, layer by layer.

Starting from the analytic AutoInit weights, the weights of every weighted
layer become graph inputs of one ONNX Runtime session (changing them costs no
rebuild). In graph order, each layer's output is measured on the batch
(Gaussian input, or ``data``) and its weight multiplied by 1/sqrt(E[y^2]) so
the measured E[y^2] is 1; later layers are measured with the earlier ones
already rescaled. Biases are zero after AutoInit, so y scales with the weight
(with the g of a weight-normalized layer, w = g·v/‖v‖; with the initializer behind a
transpose or reshape, weightview.py).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxInitError
from .graph import Graph
from .measure import _runtime, data_feeds, default_opset, gaussian_feeds, providers, seed_random_ops


def _session(model: onnx.ModelProto, weights, outputs, device):
    """A session where ``weights`` are graph inputs and ``outputs`` are extra graph outputs."""
    ort = _runtime()
    light = onnx.ModelProto()
    light.CopyFrom(model)
    keep = [t for t in light.graph.initializer if t.name not in weights]
    moved = {t.name: t for t in light.graph.initializer if t.name in weights}
    del light.graph.initializer[:]
    light.graph.initializer.extend(keep)
    declared = {i.name for i in light.graph.input}
    for name, t in moved.items():
        if name not in declared:
            light.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    present = {o.name for o in light.graph.output}
    for name in outputs:
        if name not in present:
            light.graph.output.append(onnx.ValueInfoProto(name=name))
    seed_random_ops(light.graph, default_opset(light))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(light.SerializeToString(), options, providers=providers(device))


def calibrate(model: onnx.ModelProto, layers, batch: int = 64, data=None, input_mean: float = 0.0,
              input_var: float = 1.0, device: str = "auto", seed: int = 0, sizes: dict | None = None) -> list:
    """Rescale ``model``'s weighted layers in place; returns [(node, measured E[y^2] before, factor)]."""
    tensors = {t.name: t for t in model.graph.initializer}
    outputs = {n.name or n.output[0]: n.output[0] for n in model.graph.node}
    graph = Graph(model)
    scaled = {r.weight: graph.linear_source(r.weight) for r in layers}   # the initializer W is linear in
    scaled = {weight: source for weight, source in scaled.items() if source is not None}
    layers = [r for r in layers if r.weight in scaled and r.node in outputs]
    if not layers:
        return []
    weights = {scaled[r.weight]: numpy_helper.to_array(tensors[scaled[r.weight]]).copy() for r in layers}
    names = [outputs[r.node] for r in layers]
    feeds = data_feeds(model, data) if data is not None else \
        gaussian_feeds(model, batch, np.random.default_rng(seed), input_mean, input_var, sizes)
    try:
        session = _session(model, set(weights), names, device)
    except Exception as exc:  # noqa: BLE001 - ORT refuses the model
        raise OnnxInitError(f"empirical mode: ONNX Runtime cannot run the model ({str(exc).splitlines()[0]})") from exc
    done, changes = set(), []
    for r, name in zip(layers, names):
        key = scaled[r.weight]
        if key in done:
            continue
        value = session.run([name], {**feeds, **weights})[0].astype(np.float64)
        second = float(np.mean(value * value))
        if np.isfinite(second) and second > 0:
            factor = 1.0 / np.sqrt(second)
            weights[key] = (weights[key] * factor).astype(weights[key].dtype)
            changes.append((r.node, second, factor))
        done.add(key)
    for name, value in weights.items():
        tensor = tensors[name]
        tensor.ClearField("float_data")
        tensor.raw_data = np.ascontiguousarray(value).tobytes()   # name, dims, type, doc string stay
    return changes
