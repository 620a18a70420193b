"""`onnxinit init`: re-draw every weight of a model under a classic scheme (schemes/classic.py),
then predict the signal it gives per layer, as autoinit reports it."""
from __future__ import annotations

import time

import numpy as np

from .api import _as_model, record_provenance, single_threaded_blas
from .untie import untie_uniform_weights
from .errors import OnnxInitError
from .functions import OpenedCalls
from .graph import Graph
from .layers import embedding_tables, normalization_params, weighted_layers
from .moments import Moments
from .propagate import propagate
from .report import Report
from .rules import RuleTable
from .schemes.classic import SCHEMES, ClassicScheme, Draw


def _shape(graph: Graph, name: str) -> tuple:
    return graph.weight_shape(name)[0]


def draw_all(graph: Graph, table: RuleTable, scheme: ClassicScheme) -> list[Draw]:
    """Write the scheme's values into every weighted layer, normalization layer and embedding table."""
    draws, done = [], set()

    def store(name, value, draw):
        sources = graph.payload_names(name)
        if sources and all(s in done for s in sources):
            return   # the same tensor reached through Identity (an exporter sharing equal constants)
        graph.replace_payload(name, value)
        done.update([name] + sources)
        draws.append(draw)

    for layer in weighted_layers(graph, table):
        store(layer.weight, *scheme.weight(layer))
        if layer.bias and layer.bias not in done:
            store(layer.bias, *scheme.bias(layer, _shape(graph, layer.bias)))
    fills = {"scale": 1.0, "shift": 0.0, "running_mean": 0.0, "running_var": 1.0}
    for node, *names in normalization_params(graph):
        for role, name in zip(fills, names):
            if name and name not in done:
                store(name, np.full(_shape(graph, name), fills[role]),
                      Draw(name, role, node.name or node.output[0], "constant", fills[role]))
    for name in embedding_tables(graph):
        if name not in done:
            store(name, *scheme.embedding(name, _shape(graph, name)))
    return draws


def init(model_or_path, scheme: str = "he-normal", seed: int = 0, gain: str = "scheme", rules=(),
         input_mean: float = 0.0, input_var: float = 1.0, progress=None, return_report: bool = False):
    """Re-initialize a model with a classic scheme (he-*, glorot-*, lecun-*, orthogonal, torch-default).

    Every weighted layer of the rule table gets the scheme's weights, biases
    zero (torch-default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))), normalization layers
    scale 1 / shift 0 / running stats 0 and 1, embedding tables N(0, 1); every other
    tensor stays as it was. The report predicts each weighted layer's output
    moments for N(input_mean, input_var) input, as autoinit's does.
    Returns the new ``onnx.ModelProto`` (or ``(model, Report)``).
    """
    start = time.perf_counter()
    if scheme not in SCHEMES:
        raise OnnxInitError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if gain not in ("scheme", "auto"):
        raise OnnxInitError(f"gain must be 'scheme' or 'auto', not {gain!r}")
    model, source = _as_model(model_or_path)
    table = RuleTable(rules)
    untied = untie_uniform_weights(model, table)
    calls = OpenedCalls(model, lambda node: table.lookup(node) is not None)   # weights inside are drawn
    graph = Graph(model)
    draws = draw_all(graph, table, ClassicScheme(scheme, seed, gain))
    if not any(d.role in ("weight", "embedding") for d in draws):
        raise OnnxInitError(f"{source}: found no weighted layer with a float weight to initialize")
    with single_threaded_blas():
        result = propagate(Graph(model), table, Moments(input_mean, input_var), None, progress)
    calls.restore()
    record_provenance(model, {"command": "init", "scheme": scheme, "seed": str(seed), "gain": gain})
    report = Report(
        command="init", model=source, output=None, seed=seed,
        options={"scheme": scheme, "gain": gain, "input_mean": input_mean, "input_var": input_var,
                 "rules": [str(r) for r in rules]},
        layers=result.layers, kinds_used=result.kinds_used, fallbacks=result.fallbacks,
        warnings=result.warnings, structural_changes=untied,
        output_moments={o: result.moments[o] for o in graph.outputs if o in result.moments},
        seconds=time.perf_counter() - start)
    report.extra["draws"] = [d.as_dict() for d in draws]
    return (model, report) if return_report else model
