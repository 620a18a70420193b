"""`onnxinit lsuv`: layer-sequential unit-variance initialization (Mishkin & Matas, 2016).

The data-dependent baseline: start from orthogonal weights (biases 0), then for
each weighted layer in graph order, measure the variance of its output on a data
batch with ONNX Runtime and divide its weight by √Var, until |Var − 1| < tol or
``max_iters`` tries (a weight-normalized layer through its g, a transposed or reshaped
weight through its source: Graph.linear_source); later layers are measured with the
earlier ones already rescaled. Weights are inputs of one session, so no rescale rebuilds it.
"""
from __future__ import annotations

import time

import numpy as np

from .api import _as_model, record_provenance
from .untie import untie_uniform_weights
from .classic import draw_all
from .empirical import _session
from .errors import OnnxInitError
from .functions import OpenedCalls
from .graph import Graph
from .layers import weighted_layers
from .measure import data_feeds
from .moments import Moments
from .propagate import propagate
from .report import Report
from .rules import RuleTable
from .schemes.classic import ClassicScheme

TOLERANCE = 0.1   # |Var - 1| accepted (the paper's Tol_var)
MAX_ITERS = 10    # tries per layer (the paper's T_max)


def lsuv(model_or_path, data, seed: int = 0, tol: float = TOLERANCE, max_iters: int = MAX_ITERS,
         batch: int | None = 256, input_map: dict | None = None, rules=(), device: str = "auto",
         return_report: bool = False):
    """Orthogonal start, then each weighted layer rescaled to unit output variance on ``data``
    (an .npz of model inputs; the first ``batch`` rows). Returns the new model (or ``(model, Report)``)."""
    start = time.perf_counter()
    if not tol > 0 or max_iters < 1:
        raise OnnxInitError("tol must be positive and max_iters at least 1")
    source_model, source = _as_model(model_or_path)
    table = RuleTable(rules)
    model = source_model
    untied = untie_uniform_weights(model, table)
    calls = OpenedCalls(model, lambda node: table.lookup(node) is not None)   # weights inside are drawn
    graph = Graph(model)
    draw_all(graph, table, ClassicScheme("orthogonal", seed))
    layers = weighted_layers(graph, table)
    if not layers:
        raise OnnxInitError(f"{source}: found no weighted layer with a float weight to initialize")
    feeds = data_feeds(model, data, input_map, limit=batch)
    constant = [name for name, value in feeds.items() if value.dtype.kind == "f" and np.ptp(value) == 0]
    if constant:
        raise OnnxInitError(f"{data}: input(s) {constant} are constant on the batch; LSUV needs varied data "
                            "to measure a variance")
    sources = {layer.weight: graph.linear_source(layer.weight) for layer in layers}
    unscalable = [layer.name for layer in layers if sources[layer.weight] is None]
    layers = [layer for layer in layers if sources[layer.weight] is not None]
    weights = {sources[layer.weight]: np.array(graph.constant_value(sources[layer.weight])) for layer in layers}
    try:
        session = _session(model, set(weights), [layer.node.output[0] for layer in layers], device)
    except Exception as exc:  # noqa: BLE001 - ORT refuses the model
        raise OnnxInitError(f"lsuv: ONNX Runtime cannot run the model ({str(exc).splitlines()[0]})") from exc
    records = []
    warnings = [f"{name}: its weight is computed by ops no scale passes through; left as drawn" for name in unscalable]
    done = set()
    for layer in layers:
        key = sources[layer.weight]
        if key in done:    # one tensor feeding several layers is rescaled once, for the first
            continue
        done.add(key)
        first = variance = None
        tries = 0
        for tries in range(1, max_iters + 1):
            output = session.run([layer.node.output[0]], {**feeds, **weights})[0]
            variance = float(np.var(output.astype(np.float64)))
            first = variance if first is None else first
            if not np.isfinite(variance) or variance <= 0:
                warnings.append(f"{layer.name}: output variance {variance} on the batch; left as drawn")
                break
            if abs(variance - 1.0) < tol or tries == max_iters:
                break
            weights[key] = (weights[key] / np.sqrt(variance)).astype(weights[key].dtype)
        records.append({"node": layer.name, "weight": key, "variance_before": first,
                        "variance_after": variance, "tries": tries})
    for name, value in weights.items():
        graph.replace_payload(name, value)
    floats = [v.astype(np.float64) for v in feeds.values() if v.dtype.kind == "f"]
    data_moments = Moments(float(np.mean(floats[0])), float(np.var(floats[0]))) if floats else Moments(0.0, 1.0)
    result = propagate(Graph(model), table, data_moments, None)
    calls.restore()
    record_provenance(model, {"command": "lsuv", "seed": str(seed), "tol": str(tol), "max_iters": str(max_iters)})
    report = Report(command="lsuv", model=source, output=None, seed=seed,
                    options={"tol": tol, "max_iters": max_iters, "batch": batch, "data": str(data),
                             "rules": [str(r) for r in rules]},
                    layers=result.layers, kinds_used=result.kinds_used, fallbacks=result.fallbacks,
                    warnings=warnings + result.warnings, structural_changes=untied,
                    output_moments={o: result.moments[o] for o in graph.outputs if o in result.moments},
                    seconds=time.perf_counter() - start)
    report.extra["lsuv"] = records
    return (model, report) if return_report else model
