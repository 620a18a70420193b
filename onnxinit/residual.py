"""``--residual weighted``: residual sums rescaled so their output has variance 1.

An Add (or Sum) of N signal inputs with variances nu_i becomes
    y = sum_i a_i x_i,   a_i = sqrt(1 / (nu_i * N)),
so Var(y) = sum_i a_i^2 nu_i = 1 for independent inputs. Each a_i is folded
into the weighted layer that produces x_i when only scale-equivariant ops
(reshapes, Identity, Dropout, pooling) sit between and nothing else reads
them; otherwise a Mul by the constant a_i is inserted before the Add. Every
change is described in the report.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from .signal import Signal

EQUIVARIANT = {"Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Dropout",
               "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


def _scaled(sig: Signal, a: float) -> Signal:
    return Signal(sig.roots, sig.values * a, sig.axes)


def _fold_path(name, ctx):
    """Tensors from the Add input back to a weighted layer's output, if a fold is possible."""
    graph = ctx.graph
    path = [name]
    while True:
        current = path[-1]
        if len(graph.consumers.get(current, [])) != 1 or current in graph.outputs:
            return None
        if current in ctx.layer_outputs:
            return path
        node = graph.producer.get(current)
        if node is None or node.op_type not in EQUIVARIANT or node.domain not in ("", "ai.onnx"):
            return None
        source = node.input[0]
        if not ctx.is_signal(source):
            return None
        path.append(source)


def weight_residual_sum(node, ctx) -> None:
    """Rescale the signal inputs of a residual Add in place (weights or an inserted Mul)."""
    names = [n for n in node.input if n and ctx.is_signal(n)]
    n_inputs = len(names)
    for index, name in enumerate(node.input):
        if name not in names:
            continue
        var = ctx.moments[name].var
        if not np.isfinite(var) or var <= 0:
            continue
        a = float(np.sqrt(1.0 / (var * n_inputs)))
        path = _fold_path(name, ctx)
        if path is not None and ctx.scheme is not None:
            layer = ctx.layer_outputs[path[-1]]
            for tensor in (layer.weight, layer.bias):
                if tensor and ctx.graph.is_weight(tensor):
                    value = ctx.graph.constant_value(tensor)
                    ctx.scheme.rescale(tensor, value * np.asarray(a, value.dtype))
            for tensor in path:
                ctx.set(tensor, _scaled(ctx.signal(tensor), a))
            ctx.structural_changes.append(
                f"{layer.node.name or layer.node.output[0]}: weights x{a:.4g} (residual sum {node.name or node.output[0]})")
            continue
        scaled_name = f"{name}_onnxinit_residual_scaled"
        const_name = f"{name}_onnxinit_residual_scale"
        elem = ctx.graph.elem_type(name)
        dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32
        ctx.graph.model.graph.initializer.append(numpy_helper.from_array(np.asarray(a, dtype), const_name))
        mul = helper.make_node("Mul", [name, const_name], [scaled_name], name=f"{scaled_name}_mul")
        position = list(ctx.graph.model.graph.node).index(node)
        ctx.graph.model.graph.node.insert(position, mul)
        node.input[index] = scaled_name
        ctx.graph.signal_tensors.add(scaled_name)
        ctx.set(scaled_name, _scaled(ctx.signal(name), a))
        ctx.structural_changes.append(
            f"inserted Mul by {a:.4g} on input {name!r} of residual sum {node.name or node.output[0]}")
