"""`onnxinit wninit`: Arpit, Campos & Bengio's initialization on any ONNX model.

The residual blocks and stages are found in the graph (patterns.py), every
weighted layer gets g times an orthogonal matrix with unit rows (schemes/wninit.py),
written through v and g where the layer is weight-normalized (weightnorm.py),
biases 0, normalization layers scale 1, shift 0, running statistics 0 and 1.
Everything else stays as it was.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import __version__
from .api import _as_model, record_provenance, single_threaded_blas
from .untie import untie_uniform_weights
from .errors import OnnxInitError
from .functions import OpenedCalls
from .graph import Graph
from .patterns import NORMALIZATIONS, find_structure
from .rules import RuleTable
from .schemes.wninit import DIRECTIONS, fans, gain, gamma, weights

SCHEMA_VERSION = 1
ROLE_ORDER = ("first", "middle", "last", "shortcut")
NORMALIZATION_FILLS = ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0))   # (input index, value): scale, shift, mean, var


@dataclass
class LayerInit:
    """What one weighted layer got."""

    node: str
    op_type: str
    weight: str
    shape: tuple
    role: str
    stage: int | None
    block: int | None
    rectified: bool
    gamma: Fraction
    fan_in: int
    fan_out: int
    gain: float
    weight_norm: dict | None      # {"v", "g", "axes"} when written through a weight norm
    bias: str | None

    def as_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "weight": self.weight, "shape": list(self.shape),
                "role": self.role, "stage": self.stage, "block": self.block, "rectified": self.rectified,
                "gamma": float(self.gamma), "gamma_text": _fraction(self.gamma), "fan_in": self.fan_in,
                "fan_out": self.fan_out, "gain": self.gain, "weight_norm": self.weight_norm, "bias": self.bias}


@dataclass
class WnResult:
    model: str
    seed: int
    direction: str
    layers: list
    blocks: list                  # patterns.Block
    stages: list                  # patterns.Stage
    normalization: list           # names of normalization tensors reset
    warnings: list
    seconds: float = 0.0
    output: str | None = None

    def as_dict(self) -> dict:
        return {
            "schema": "onnxinit-wninit", "schema_version": SCHEMA_VERSION, "tool_version": __version__,
            "command": "wninit", "model": self.model, "output": self.output, "seed": self.seed,
            "direction": self.direction, "structure": "residual" if self.blocks else "feed-forward",
            "stages": [{"stage": s.index, "blocks": s.count, "block_indices": list(s.blocks)} for s in self.stages],
            "blocks": [{"block": b.index, "stage": b.stage, "add": b.add, "input": b.input, "kind": b.kind,
                        "shortcut": b.shortcut, "projection": b.projection, "branch": list(b.branch),
                        "first": list(b.first), "last": list(b.last)} for b in self.blocks],
            "layers": [layer.as_dict() for layer in self.layers],
            "normalization_reset": list(self.normalization), "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, allow_nan=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fraction(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _reset_normalization(graph: Graph, done: set) -> list:
    """Scale 1, shift 0, running mean 0, running variance 1 on every normalization layer."""
    reset = []
    for node in graph.nodes:
        if node.op_type not in NORMALIZATIONS or node.input[0] not in graph.signal_tensors:
            continue   # a BatchNormalization over a weight is a weight standardization's (weightstd.py)
        for index, fill in NORMALIZATION_FILLS:
            name = node.input[index] if index < len(node.input) else ""
            if name and name not in done and graph.is_weight(name) and graph.weight_shape(name) is not None:
                graph.replace_payload(name, np.full(graph.weight_shape(name)[0], fill))
                done.add(name)
                reset.append(name)
    return reset


def wninit(model_or_path, seed: int = 0, direction: str = "forward", return_report: bool = False, rules=()):
    """Arpit et al.'s initialization: orthogonal weights with unit rows times a gain per role, biases 0.

    g = √(γ · fan_in / fan_out) (``direction="forward"``) or √γ (``"backward"``),
    γ = 2 for branch and feed-forward layers a rectifier follows (1 otherwise),
    1/B_k for the last layer of a residual branch in a stage of B_k blocks, 1 for
    projection shortcuts. A weight-normalized layer (w = g·v/‖v‖ in the graph)
    gets v orthogonal with unit rows and g the gain.

    Returns the new ``onnx.ModelProto`` (the input is never modified), or
    ``(model, WnResult)`` with ``return_report=True``; ``describe(result)`` prints it.
    """
    start = time.perf_counter()
    if direction not in DIRECTIONS:
        raise OnnxInitError(f"direction must be forward or backward, not {direction!r}")
    model, source = _as_model(model_or_path)
    table = RuleTable(rules)
    untied = untie_uniform_weights(model, table)
    calls = OpenedCalls(model, lambda node: table.lookup(node) is not None)   # weights inside are drawn
    graph = Graph(model)
    structure = find_structure(graph, table)
    if not structure.layers:
        raise OnnxInitError(f"{source}: found no weighted layer with a float weight to initialize")
    warnings = [f"changed: {line}" for line in untied] + list(structure.skipped)
    if not structure.blocks:
        warnings.append("no residual block found: every layer gets the feed-forward rule "
                        "(γ = 2 before a rectifier, 1 otherwise)")
    done, records = set(), []
    with single_threaded_blas():
        for layer in structure.layers:
            if layer.weight in done:
                warnings.append(f"weight {layer.weight!r} is shared by several layers; drawn once, for its first use")
                continue
            stage = structure.stage_of(layer)
            g_role = gamma(layer, stage.count if stage else None)
            fan_in, fan_out = fans(layer.layout)
            g = gain(g_role, fan_in, fan_out, direction)
            wn = layer.weight_norm
            graph.replace_payload(layer.weight, weights(layer, seed, g, wn.v if wn else layer.weight))
            done.add(layer.weight)
            if layer.bias and layer.bias not in done and graph.weight_shape(layer.bias) is not None:
                graph.replace_payload(layer.bias, np.zeros(graph.weight_shape(layer.bias)[0]))
                done.add(layer.bias)
            records.append(LayerInit(
                layer.name, layer.node.op_type, layer.weight, tuple(layer.layout.shape), layer.role, layer.stage,
                layer.block, layer.rectified, g_role, fan_in, fan_out, g,
                {"v": wn.v, "g": wn.g, "axes": list(wn.axes)} if wn else None, layer.bias))
    normalization = _reset_normalization(graph, done)
    calls.restore()
    record_provenance(model, {"command": "wninit", "seed": str(seed), "direction": direction})
    result = WnResult(source, seed, direction, records, structure.blocks, structure.stages, normalization,
                      warnings, time.perf_counter() - start)
    return (model, result) if return_report else model


# --- the printout ------------------------------------------------------------
def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def _formula(layer: LayerInit, direction: str) -> str:
    g = _fraction(layer.gamma)
    if direction == "backward":
        return f"g = √{g} = {layer.gain:.4g}"
    return f"g = √({g}·{layer.fan_in}/{layer.fan_out}) = {layer.gain:.4g}"


def _why(layer: LayerInit, stages) -> str:
    if layer.role == "last":
        return f"last layer of a branch, stage {layer.stage} has B = {stages[layer.stage - 1].count} blocks"
    if layer.role == "shortcut":
        return "projection shortcut"
    where = {"first": "first layer of a branch", "middle": "middle layer of a branch"}.get(layer.role, layer.role)
    return f"{where}, {'a rectifier follows' if layer.rectified else 'no rectifier follows'}"


def describe(result: WnResult, explain: bool = False) -> str:
    """The summary the CLI prints: blocks and stages found, γ per role; ``explain``: one line per layer."""
    lines = [f"onnxinit wninit: {result.model}" + (f" -> {result.output}" if result.output else "")]
    rule = "g = √(γ·fan_in/fan_out)" if result.direction == "forward" else "g = √γ"
    lines.append(f"  direction {result.direction}: orthogonal weights with unit rows times {rule}, biases 0")
    by_stage: dict = {}
    for layer in result.layers:
        by_stage.setdefault(layer.stage, []).append(layer)
    if result.blocks:
        blocks, stages = _count(len(result.blocks), "block"), _count(len(result.stages), "stage")
        lines.append(f"  residual network: {blocks} in {stages}")
        for stage in result.stages:
            blocks = [result.blocks[i - 1] for i in stage.blocks]
            kinds = sorted({b.kind for b in blocks})
            shortcuts = sorted({b.shortcut for b in blocks})
            gammas = sorted({(ROLE_ORDER.index(layer.role), layer.role, _fraction(layer.gamma))
                             for layer in by_stage.get(stage.index, [])})
            roles = ", ".join(f"{role} γ = {g}" for _, role, g in gammas)
            lines.append(f"    stage {stage.index}: {_count(stage.count, 'block')} (B = {stage.count}; "
                         f"{'/'.join(kinds)}; shortcuts {'/'.join(shortcuts)}): {roles}")
    else:
        lines.append("  no residual blocks found: feed-forward network")
    outside = by_stage.get(None, [])
    if outside:
        shown = ", ".join(f"{layer.role} {layer.node} γ = {_fraction(layer.gamma)}" for layer in outside[:4])
        more = f" (+{len(outside) - 4} more)" if len(outside) > 4 else ""
        lines.append(f"  layers outside blocks: {shown}{more}")
    normalized = sum(1 for layer in result.layers if layer.weight_norm)
    lines.append(f"  weighted layers initialized: {len(result.layers)} ({normalized} through weight norm: "
                 "v orthogonal with unit rows, g = gain)")
    lines.append(f"  biases zeroed: {sum(1 for layer in result.layers if layer.bias)}; "
                 f"normalization tensors reset: {len(result.normalization)}")
    if explain:
        for layer in result.layers:
            place = f"stage {layer.stage} block {layer.block}" if layer.block else "outside blocks"
            wn = f"; weight norm v={layer.weight_norm['v']} g={layer.weight_norm['g']}" if layer.weight_norm else ""
            lines.append(f"    {layer.node} ({layer.op_type} {_shape_text(layer.shape)}), {place}: "
                         f"{_why(layer, result.stages)}: γ = {_fraction(layer.gamma)}, "
                         f"{_formula(layer, result.direction)}{wn}")
    for warning in result.warnings[:10]:
        lines.append(f"  warning: {warning}")
    if len(result.warnings) > 10:
        lines.append(f"  ... {len(result.warnings) - 10} more warnings (see --json)")
    lines.append(f"  time: {result.seconds:.2f} s")
    return "\n".join(lines)
