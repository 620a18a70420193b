"""Walk the graph once in topological order, asking each node's rule for its outputs' moments."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from .batch_one import value_at_batch_one
from .dims import PROBE_BATCH, REDUCE_OPS, SAME_SHAPE, fill_dims
from .graph import CACHE_LIMIT, FLOAT_TYPES, Graph, outer_references, subgraph_weights, subgraphs
from .kinds import KINDS
from .kinds.common import Unsupported, attributes, signal_inputs
from .decomposed import spelled_out_norm
from .kinds.transformer import normalize, single_row
from .measure import index_range
from .moments import Moments
from .montecarlo import monte_carlo
from .montecarlo_source import monte_carlo_from_source
from .op_eval import run_node, too_large
from .random_ops import as_signal, sample_random
from .residual import weight_residual_sum
from .signal import Signal, gaussian
from .weightview import VIEW_OPS

FOLD_LIMIT = 1 << 22  # constant subgraph outputs larger than this are not folded


class MomentsView(Mapping):
    """Pooled moments per signal tensor, computed when first asked for."""

    def __init__(self, signals: dict):
        self._signals = signals
        self._cache: dict = {}

    def __getitem__(self, name: str) -> Moments:
        if name not in self._cache:
            if self._signals.get(name) is None:
                raise KeyError(name)
            self._cache[name] = self._signals[name].moments()
        return self._cache[name]

    def __iter__(self):
        return iter(self._signals)

    def __len__(self) -> int:
        return len(self._signals)

    def __contains__(self, name) -> bool:
        return name in self._signals

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


@dataclass
class LayerRecord:
    node: str
    op_type: str
    weight: str
    fan_in: int
    tap_fraction: float
    input: Moments
    output: Moments
    std: float


@dataclass
class Propagation:
    """State of one pass: moments and expressions per tensor, plus what happened."""

    graph: Graph
    scheme: object = None
    moments: "MomentsView" = None
    signals: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    kinds_used: dict = field(default_factory=dict)
    fallbacks: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    residual: str = "sum"
    layer_outputs: dict = field(default_factory=dict)
    unit_correlation: dict = field(default_factory=dict)
    embeddings: list = field(default_factory=list)
    recurrent: list = field(default_factory=list)   # (node, op type, weight std per gate, output Moments)
    recurrent_samples: dict = field(default_factory=dict)   # a recurrent op's sampled outputs (recurrent.py)
    structural_changes: list = field(default_factory=list)
    row_shared: dict = field(default_factory=dict)   # token rows (T·N, E): share common to all tokens
    softmax_tilt: dict = field(default_factory=dict)  # softmax output: tau (montecarlo.softmax_tilt)
    query_overlap: dict = field(default_factory=dict)  # softmax output: (kappa, d) (montecarlo.query_overlap)
    score_factors: dict = field(default_factory=dict)  # scores: ((signal, dims) of q, of k, k's keys first) (scores.py)
    probe_values: dict = field(default_factory=dict)  # random masks sampled at the probe batch (random_ops.py)

    # --- what kinds use --------------------------------------------------
    def __post_init__(self):
        self.moments = MomentsView(self.signals)

    def is_signal(self, name: str) -> bool:
        return name in self.signals

    def value(self, name: str):
        return self.graph.constant_value(name)

    def rank(self, name: str):
        return self.graph.rank(name)

    def has_positions(self, name: str) -> bool:
        """Rank >= 3 with some axis after the channel axis not known to be 1."""
        rank = self.rank(name)
        if rank is None or rank < 3:
            return False
        dims = self.graph.static_dims(name)
        return not dims or any(d != 1 for d in dims[2:])

    def signal(self, name: str) -> Signal:
        return self.signals[name]

    def set(self, name: str, signal: Signal) -> None:
        self.signals[name] = signal
        self.moments.forget(name)

    def release(self, name: str) -> None:
        """Every consumer has been visited: keep the tensor's moments, drop its grid values."""
        if name in self.signals and self.signals[name] is not None:
            self.moments[name]   # noqa: B018 - computed and cached before the values go
            roots = [r.name for r in self.signals[name].roots if r.name in self.unit_correlation]
            self.signals[name] = None
            for root in roots:   # a dense layer's unit correlations (up to 32 MB) die with its last signal
                if not any(s is not None and any(r.name == root for r in s.roots) for s in self.signals.values()):
                    del self.unit_correlation[root]

    def set_moments(self, name: str, m: Moments) -> None:
        """A signal with pooled statistics only (no sites)."""
        rank = self.rank(name) or 1
        self.set(name, gaussian(name, m.mean, m.shared, m.within, (None,) * rank, self.has_positions(name)))

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def record_layer(self, layer, m: Moments) -> None:
        rms = getattr(layer, "weight_rms", None)   # set by a scheme that just drew the weights
        if rms is None:
            w = self.value(layer.weight).reshape(-1)
            rms = float(np.sqrt(np.dot(w, w) / max(w.size, 1)))
        self.layers.append(LayerRecord(layer.node.name or layer.node.output[0], layer.node.op_type, layer.weight,
                                       layer.layout.fan_in, layer.tap_fraction, layer.input_moments, m, rms))


SHAPE_DATA_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Div", "Mul", "Add", "Sub", "Slice",
                  "Cast", "Floor", "Ceil", "Identity", "Reshape", "ReduceProd", "Neg", "Max", "Min", "Pow", "Sqrt",
                  "Reciprocal", "Range", "Equal", "Where", "ConstantOfShape", "Expand", "Mod", "Abs"}
SECOND_PROBE = 10007


def _shape_data(node, ctx) -> None:
    """Shape arithmetic evaluated twice, with unknown batch dims set to two probe sizes.

    Results equal under both probes do not depend on the batch: they become
    constants (sqrt(head_dim) for attention scaling, position ids). Others stay
    in graph.shape_values as (probe 1, probe 2) pairs, which dims.py reads to
    work out a Reshape's static dims; they are never used as values.
    """
    graph = ctx.graph
    if node.op_type not in SHAPE_DATA_OPS or node.domain not in ("", "ai.onnx"):
        return
    if node.op_type == "Shape":
        dims = graph.static_dims(node.input[0])
        if not dims or sum(d is None for d in dims) > 1:
            return
        attrs = {a.name: a.i for a in node.attribute}
        pair = []
        for probe in (PROBE_BATCH, SECOND_PROBE):
            value = np.array([probe if d is None else d for d in dims], np.int64)
            pair.append(value[attrs.get("start", 0):attrs.get("end", len(value))])
        _record_shape_data(graph, node.output[0], pair)
        return
    if not any(n in graph.shape_values for n in node.input if n):
        return
    runs = ([], [])
    for name in node.input:
        pair = graph.shape_values.get(name) if name else None
        if pair is None and name:
            value = graph.constant_value(name)
            if value is None:
                return
            pair = (value, value)
        for k in (0, 1):
            runs[k].append(None if pair is None else pair[k])
    if node.op_type == "Expand" and _expand_over_batch(node, runs, graph):
        return
    if any(too_large(node, runs[k], 4096) for k in (0, 1)):
        return
    try:
        outputs = [run_node(node, runs[k], graph.opsets) for k in (0, 1)]
    except Exception:  # noqa: BLE001 - not shape arithmetic after all
        return
    for name, a, b in zip([o for o in node.output if o], outputs[0], outputs[1]):
        a, b = np.asarray(a), np.asarray(b)
        if a.size <= 4096:
            _record_shape_data(graph, name, (a, b))


def _expand_over_batch(node, runs, graph) -> bool:
    """Expand of a constant to a shape that differs between the probes only in the batch dim
    (BERT's token_type_ids buffer): record the constant expanded to batch 1, which broadcasts
    wherever the batch-sized tensor would. True when recorded."""
    data, (first, second) = runs[0][0], (runs[0][1], runs[1][1])
    if data is None or runs[1][0] is None or not np.array_equal(data, runs[1][0]) or first is None or second is None:
        return False
    first, second = np.asarray(first).reshape(-1), np.asarray(second).reshape(-1)
    if first.shape != second.shape or first.size == 0 or first[0] == second[0] \
            or not np.array_equal(first[1:], second[1:]):
        return False
    try:
        shape = np.broadcast_shapes(np.shape(data), (1,) + tuple(int(d) for d in first[1:]))
    except ValueError:
        return False
    if float(np.prod(shape, dtype=np.float64)) > FOLD_LIMIT:
        return False
    graph.set_value(node.output[0], np.broadcast_to(data, shape).copy())
    return True


def _record_shape_data(graph, name, pair) -> None:
    a, b = pair
    if a.shape == b.shape and np.array_equal(a, b):
        graph.set_value(name, a)      # the same for any batch size: a true constant
    else:
        graph.shape_values[name] = (a, b)


def _constant_lookup(node, ctx: Propagation) -> bool:
    """Gather(table, constant ids) added to the signal: a position embedding (GPT-2's wpe
    gathered at Range(T)), an embedding table like any other, though its output is a constant."""
    graph = ctx.graph
    if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or not graph.weight_tensor(node.input[0]):
        return False
    if int(attributes(node).get("axis", 0)) != 0 or graph.elem_type(node.input[1]) in FLOAT_TYPES:
        return False
    table = graph.constant_value(node.input[0])
    if table is None or table.ndim != 2:
        return False

    def is_feature_width(name):   # rows as wide as the signal's features (not a bias over heads)
        dims = graph.static_dims(name)
        return bool(dims) and dims[-1] == table.shape[1]
    return any(c.op_type in ("Add", "Sum") and any(i in graph.signal_tensors and is_feature_width(i) for i in c.input)
               for c in graph.consumers.get(node.output[0], []))


def _fold_constants(node, graph: Graph) -> None:
    """Evaluate a node whose inputs are all known constants, so later rules can read its value.
    A weight too large to keep beside its TensorProto is not moved through Identity,
    Transpose, Reshape and the like (its weight view reads it where a rule needs it): an
    ALBERT-xxlarge export re-read its 256 MB matrices for every Identity of its shared layers."""
    if node.op_type in VIEW_OPS and any(n and _too_big_to_fold(n, graph) for n in node.input):
        return
    if _gather_of_one_value(node, graph) or _token_ids_against_one_id(node, graph):
        return
    values = [graph.constant_value(n) if n else None for n in node.input]
    if any(v is None for v, n in zip(values, node.input) if n):
        return
    if node.domain not in ("", "ai.onnx") or node.op_type in ("RandomNormal", "RandomUniform",
                                                              "RandomNormalLike", "RandomUniformLike"):
        return
    if too_large(node, values, FOLD_LIMIT):
        return
    try:
        outputs = run_node(node, values, graph.opsets)
    except Exception:  # noqa: BLE001 - an op the reference cannot run stays unknown
        return
    for name, value in zip([o for o in node.output if o], outputs):
        value = np.asarray(value)
        if value.size <= FOLD_LIMIT:
            graph.set_value(name, value)


def _gather_of_one_value(node, graph: Graph) -> bool:
    """Gather / GatherElements / GatherND from a constant integer buffer whose entries are all
    equal is that value wherever the indices point, known or not (RoBERTa's token_type_ids: a
    zero buffer gathered at position ids computed from the input): recorded with size 1 on
    every axis, so it broadcasts as the batch-sized tensor would (and an Expand of it to the
    batch is folded at batch 1). Only for ids that reach an embedding table: masks built the
    same way are left to batch_one.py, which keeps their shapes. Float data is left alone: an
    all-zero table is a weight to draw."""
    if node.op_type not in ("Gather", "GatherElements", "GatherND") or node.domain not in ("", "ai.onnx") \
            or len(node.input) < 2 or graph.constant_value(node.input[1]) is not None \
            or not _indexes_a_table(node.output[0], graph):
        return False
    data = graph.constant_value(node.input[0])
    rank = graph.rank(node.output[0])
    if data is None or rank is None or data.size == 0 or data.dtype.kind not in "iub":
        return False
    first = data.reshape(-1)[0]
    if not np.all(data == first):
        return False
    graph.set_value(node.output[0], np.full((1,) * rank, first, dtype=data.dtype))
    return True


def _token_ids_against_one_id(node, graph: Graph) -> bool:
    """Equal(token ids, one constant id) is False everywhere for ids drawn over the table (what
    measuring feeds; a given id, as the padding id, turns up with probability 1 / rows): recorded
    at batch 1. RoBERTa computes its position ids from it (cumsum of ids != padding), which
    then fold to the constant 2..T+1 and make its position table a constant lookup, one row per
    token, as GPT-2's. Before, those ids counted as input-dependent and the rows as random per
    token, and the second layer's attention projection measured 2.9 for a predicted 1."""
    if node.op_type != "Equal" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return False
    for ids, other in (node.input, node.input[::-1]):
        if ids not in graph.inputs or graph.constant_value(ids) is not None:
            continue
        one = graph.constant_value(other)
        dims = graph.static_dims(ids)
        if one is None or np.size(one) != 1 or not dims or any(d is None for d in dims[1:]):
            continue
        rows = None if graph.elem_type(ids) in FLOAT_TYPES else index_range(graph.model, ids)
        if rows is None or rows < 2 or not 0 <= int(np.asarray(one).reshape(-1)[0]) < rows:
            continue
        graph.set_value(node.output[0], np.zeros([1] + list(dims[1:]), bool))
        return True
    return False


ID_PATH = {"Expand", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Transpose"}


def _indexes_a_table(name: str, graph: Graph, limit: int = 4) -> bool:
    """Does ``name`` reach the ids input of a Gather on a weight table through ops that only
    copy, reshape or cast it?"""
    frontier = [name]
    for _ in range(limit):
        following = []
        for current in frontier:
            for consumer in graph.consumers.get(current, []):
                if consumer.domain not in ("", "ai.onnx"):
                    continue
                if consumer.op_type == "Gather" and len(consumer.input) > 1 and consumer.input[1] == current \
                        and graph.is_weight(consumer.input[0]):
                    return True
                if consumer.op_type in ID_PATH and consumer.input[0] == current:
                    following.append(consumer.output[0])
        frontier = following
    return False


def _too_big_to_fold(name: str, graph: Graph) -> bool:
    known = graph.weight_shape(name) if name in graph.initializers or name in graph.constant_nodes else None
    if known is None or known[1] is None:
        return False
    return int(np.prod(known[0], dtype=np.int64)) * known[1].itemsize > CACHE_LIMIT


def _fallback(node, ctx: Propagation, reason: str) -> None:
    """No rule handled the node: run it alone on samples (montecarlo.py), else pass statistics through."""
    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    ctx.fallbacks[key] = ctx.fallbacks.get(key, 0) + 1
    try:
        try:
            engine = monte_carlo_from_source(node, ctx)   # inputs computed from one tensor stay related
        except Exception:  # noqa: BLE001 - an optional refinement: the plain fallback follows
            try:
                engine = monte_carlo(node, ctx)
            except (ValueError, IndexError, TypeError) as exc:   # shapes it did not foresee: never a crash
                raise Unsupported(f"sampling failed ({type(exc).__name__}: {exc})") from exc
    except Unsupported as exc:
        ctx.warn(f"{key} ({node.name or node.output[0]}): {reason}; Monte Carlo impossible ({exc}); "
                 "statistics passed through unchanged")
        _passthrough(node, ctx)
        return
    ctx.warn(f"{key} ({node.name or node.output[0]}): {reason}; estimated by Monte Carlo with {engine}")


def _passthrough(node, ctx: Propagation) -> None:
    """Give the node's float outputs the first signal input's moments."""
    source = ctx.moments[signal_inputs(node, ctx)[0]]
    for out in node.output:
        if out and out in ctx.graph.signal_tensors:
            ctx.set_moments(out, source if ctx.has_positions(out) else source.without_positions())


def _control_flow(node, ctx: Propagation) -> bool:
    """If / Loop / Scan reading a signal (directly or from inside a subgraph): the subgraphs are
    not analysed. Float outputs take the moments of the first signal the node reads, and a
    warning names the weights it uses, which keep their values. False for other nodes."""
    graph = ctx.graph
    if not subgraphs(node):
        return False
    sources = [name for name in graph.reads(node) if name and ctx.is_signal(name)]
    if not sources:
        return False
    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    ctx.fallbacks[key] = ctx.fallbacks.get(key, 0) + 1
    weights = subgraph_weights(node) + [n for n in outer_references(node) if graph.is_weight(n)]
    left = f"; weights it uses keep their values: {', '.join(weights[:5])}" + \
        (f" and {len(weights) - 5} more" if len(weights) > 5 else "") if weights else ""
    ctx.warn(f"{key} ({node.name or node.output[0]}): control flow, its subgraphs are not analysed; "
             f"outputs take the statistics of {sources[0]!r}{left}")
    source = ctx.moments[sources[0]]
    for out in node.output:
        if out and out in graph.signal_tensors:
            ctx.set_moments(out, source if ctx.has_positions(out) else source.without_positions())
    return True


def _visit(node, ctx: Propagation, rules, residual: str) -> None:
    """One node: its rule's kind, the Monte Carlo fallback, or constant and shape folding."""
    graph = ctx.graph
    if _control_flow(node, ctx):
        return
    if not signal_inputs(node, ctx):
        rule = rules.lookup(node)
        if rule is not None and rule.get("source") and any(o in graph.signal_tensors for o in node.output if o):
            try:
                KINDS[rule.kind](node, rule, ctx)
                ctx.kinds_used[rule.kind] = ctx.kinds_used.get(rule.kind, 0) + 1
                return
            except Unsupported as exc:
                ctx.warn(f"{node.op_type} ({node.name or node.output[0]}): {exc}")
        if sample_random(node, ctx):
            ctx.kinds_used["random"] = ctx.kinds_used.get("random", 0) + 1
            return
        if node.op_type != "Constant":
            lookup = ctx.scheme is not None and _constant_lookup(node, ctx)
            if lookup:
                table = graph.constant_value(node.input[0])
                ctx.scheme.draw_embedding(node.input[0], table, ctx,
                                          reference=single_row(graph.constant_value(node.input[1]), table.shape[0]))
            _fold_constants(node, graph)
            if lookup and graph.constant_value(node.output[0]) is not None:
                rows = np.asarray(graph.constant_value(node.output[0]), np.float64)
                ctx.embeddings.append((node.name or node.output[0], node.input[0],
                                       Moments(float(rows.mean()), float(rows.var()))))
            if not all(graph.is_constant(o) for o in node.output if o):
                _shape_data(node, ctx)
        return
    if not any(o in graph.signal_tensors for o in node.output if o):
        _shape_data(node, ctx)
        return
    for name in node.input:
        if name and name in ctx.probe_values and not ctx.is_signal(name):
            as_signal(name, ctx)
    if node.op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Gather", "Slice",
                        "Pad", "MatMul", "Concat", "Expand", "Tile", "Conv", "MaxPool", "AveragePool",
                        "LpPool", "GlobalAveragePool", "GlobalMaxPool") or node.op_type in SAME_SHAPE \
            or node.op_type in REDUCE_OPS:
        fill_dims(node, ctx)
    rule = rules.lookup(node)
    if rule is None:
        _fallback(node, ctx, "no rule for this op")
        return
    if rule.kind == "elementwise" and len([o for o in node.output if o]) == 1:
        _masks_at_batch_one(node, ctx)
        fill_dims(node, ctx, elementwise=True)
    if _spelled_out_norm(node, ctx):
        return
    if residual == "weighted" and node.op_type in ("Add", "Sum") and node.domain in ("", "ai.onnx") \
            and len(signal_inputs(node, ctx)) >= 2:
        weight_residual_sum(node, ctx)
    try:
        KINDS[rule.kind](node, rule, ctx)
        out = ctx.signals.get(node.output[0])
        rank = ctx.rank(node.output[0])
        if out is not None and rank is not None and out.rank != rank:
            raise Unsupported(f"the rule gave rank {out.rank} where the graph has {rank}")
        ctx.kinds_used[rule.kind] = ctx.kinds_used.get(rule.kind, 0) + 1
    except Unsupported as exc:
        _fallback(node, ctx, str(exc))
    except (ValueError, IndexError) as exc:   # shapes the rule did not foresee: never a crash
        _fallback(node, ctx, f"the {rule.kind} rule failed ({exc})")


def _spelled_out_norm(node, ctx: Propagation) -> bool:
    """A Mul or Div that divides a tensor by its own root mean square (decomposed.py) gets the
    normalization's output; True when it did."""
    if node.op_type not in ("Mul", "Div") or node.domain not in ("", "ai.onnx"):
        return False
    norm = spelled_out_norm(node, ctx)
    if norm is None:
        return False
    numerator, axes, eps = norm
    try:
        normalize(ctx, numerator, node.output[0], axes, eps, center=False)
    except (ValueError, IndexError):   # shapes it did not foresee: the elementwise rule instead
        return False
    ctx.kinds_used["layernorm"] = ctx.kinds_used.get("layernorm", 0) + 1
    return True


def _masks_at_batch_one(node, ctx: Propagation) -> None:
    """Inputs built from the batch size (attention masks) and not yet known: their values at
    batch 1, which broadcast over the batch (batch_one.py). Shape arithmetic that the probes
    follow (graph.shape_values: Reshape targets) is left to them."""
    graph = ctx.graph
    for name in node.input:
        if name and not ctx.is_signal(name) and name not in graph.shape_values and name not in ctx.probe_values \
                and graph.constant_value(name) is None:
            value = value_at_batch_one(name, graph, ctx.is_signal, FOLD_LIMIT)
            if value is not None:
                graph.set_value(name, value)


def _mask_as_ones(name: str, graph: Graph) -> None:
    """An integer or bool graph input that indexes no embedding table is a mask (BERT's
    attention_mask): taken as all ones, nothing masked out (what measuring feeds it too), at
    batch 1, so the additive mask built from it folds to a constant."""
    elem = graph.elem_type(name)
    if elem is None or elem in FLOAT_TYPES or index_range(graph.model, name) is not None:
        return
    dims = graph.static_dims(name)
    if not dims or any(d is None for d in dims[1:]):
        return
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    graph.set_value(name, np.ones([dims[0] or 1] + list(dims[1:]), dtype))


def propagate(graph: Graph, rules, input_moments: Moments, scheme=None, progress=None,
              residual: str = "sum") -> Propagation:
    """Moments of every signal tensor; with a scheme, weights are drawn on the way.

    ``progress(done, total)`` is called after each node. ``residual="weighted"``
    rescales residual sums to unit variance (see residual.py).
    """
    if residual not in ("sum", "weighted"):
        raise ValueError(f"residual must be 'sum' or 'weighted', not {residual!r}")
    ctx = Propagation(graph, scheme, residual=residual)
    for name in graph.inputs:
        if name in graph.signal_tensors:
            m = Moments(input_moments.mean, input_moments.var, 0.0)
            ctx.set_moments(name, m if ctx.has_positions(name) else m.without_positions())
        else:
            _mask_as_ones(name, graph)
    total = len(graph.nodes)
    remaining = {name: len(users) for name, users in graph.consumers.items()}
    keep = set(graph.outputs)
    for done, node in enumerate(graph.nodes, 1):
        if progress is not None:
            progress(done, total)
        _visit(node, ctx, rules, residual)
        for name in node.input:
            if name in remaining:
                remaining[name] -= 1
                if remaining[name] == 0 and name not in keep:
                    ctx.release(name)
    return ctx
