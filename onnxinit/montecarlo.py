"""Monte Carlo fallback: an op with no rule is run alone on Gaussian samples of its inputs.

Signal inputs are drawn from N(mean, var) per site (their propagated
statistics, spelled out to the tensor's real shape), constant inputs are
their values. The op runs in ONNX Runtime when it is installed (contrib and
custom-domain ops included) and in ``onnx.reference`` otherwise. The outputs'
per-channel statistics (axis 1) become fresh Gaussian signals.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .kinds.common import Unsupported, softmax_on_last_axis
from .op_eval import run_node
from .signal import Sites, gaussian

MIN_ELEMENTS = 1 << 14   # samples drawn per signal input, at least
MAX_BATCH = 4096
MAX_CHANNELS = 1 << 14
MAX_ELEMENTS = 1 << 22   # inputs larger than this per sample are not sampled


def _shape(ctx, name):
    dims = ctx.graph.static_dims(name)
    if dims is None or any(d is None for d in dims[1:]):
        raise Unsupported(f"input {name!r} has no static shape to sample")
    return dims


def softmax_tilt(scores: np.ndarray, element: np.ndarray, p: np.ndarray, within: float, row_var=None) -> float:
    """tau = E[(sum_j p_j e_j / sigma)^2] - E[sum_j p_j^2] for a softmax over the last axis,
    e_j the part of score j that varies from key to key, sigma^2 its variance (``row_var`` per
    row where the rows' spreads differ, each query's own: scores.py; else ``within``), p the
    softmax.

    The keys' scores and values are projections of the same tokens, so each value channel
    has about 1/D of its token-to-token variance along a query's score direction (D the
    tokens' width), and a softmax moves the values' average along that direction by
    sum_j p_j e_j / sigma of the tokens' spread: P @ V then gains nu_v tau / D over the
    independent product (kinds/transformer.py). A query whose scores spread more moves further
    along its direction, its values no more: each row is measured in its own units."""
    if not within > 0:
        return 0.0
    valid = np.isfinite(scores)
    e = np.where(valid, element, 0.0)
    scale = np.sqrt(np.maximum(row_var, 1e-30)) if row_var is not None else np.sqrt(within)
    tilted = np.sum(p * e / scale, axis=-1)
    return float(np.mean(tilted ** 2) - np.mean(np.sum(p * p, axis=-1)))


def query_overlap(p: np.ndarray) -> tuple | None:
    """(kappa, d) for attention probabilities p (..., queries, keys), rows summing to 1:
        d     = E[sum_k p_qk^2]               (a query with itself),
        kappa = E[sum_k p_qk p_q'k], q != q'  (two different queries of one row block).
    Values e_k independent from key to key (variance W) give the attention-weighted values
    Cov(o_q, o_q') = kappa W between queries and E[o_q^2] = d W: kappa = 1/K for uniform rows,
    larger where queries read the same few keys (a causal mask: query 0 reads key 0 only,
    and every later query reads it too)."""
    if p.ndim < 3 or p.shape[-2] < 2:
        return None
    queries = p.shape[-2]
    p = np.where(np.isfinite(p), p, 0.0)
    columns = p.sum(axis=-2)                                  # (..., keys): sum over queries
    squares = np.sum(p * p, axis=(-2, -1))
    kappa = (np.sum(columns * columns, axis=-1) - squares) / (queries * (queries - 1))
    return float(np.mean(kappa)), float(np.mean(squares) / queries)


def site_grid(sig, dims):
    """(mean, var, shared) of every element of a tensor of shape ``dims``: its site's statistics
    (shared clipped to [0, var])."""
    mean, var, shared = sig.stats()
    index = []
    for a, (sites, d) in enumerate(zip(sig.axes, dims)):
        if sites is None:
            index.append(np.zeros(d, np.int64))
        else:
            index.append(sites.index_of(np.arange(d)))
    grid = np.ix_(*index)
    site_shape = [1 if s is None else s.size for s in sig.axes]
    v = np.broadcast_to(var, site_shape)[grid]
    return (np.broadcast_to(mean, site_shape)[grid], v,
            np.clip(np.broadcast_to(shared, site_shape)[grid], 0.0, v))


def draw_samples(sig, dims, rng, parts=None):
    """Samples of shape dims (batch filled in) from the signal's per-site Gaussian statistics:
    the shared part drawn once per (sample, channel) and equal at every position (axes 2, ...),
    the rest per element (a part common to a whole attention row cancels in its softmax)."""
    m, v, s = site_grid(sig, dims)
    if len(dims) < 3:
        return m + np.sqrt(v) * rng.standard_normal(dims)
    per_sample = rng.standard_normal(list(dims[:2]) + [1] * (len(dims) - 2))
    element = np.sqrt(v - s) * rng.standard_normal(dims)
    if parts is not None:
        parts["element"] = element
        parts["within"] = float(np.mean(np.where(np.isfinite(m), v - s, 0.0)[np.isfinite(m)])) \
            if np.isfinite(m).any() else 0.0
    return m + np.sqrt(s) * per_sample + element


def _run_ort(node, feeds, graph):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    inputs = []
    for name in node.input:
        if name:
            value = feeds[name]
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            inputs.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
    outputs = [helper.make_tensor_value_info(o, graph.elem_type(o) or onnx.TensorProto.FLOAT, None)
               for o in node.output if o]
    g = helper.make_graph([node], "fallback", inputs, outputs)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in graph.opsets.items()])
    model.ir_version = min(model.ir_version, 10)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in inputs}})


def run_alone(node, feeds: dict, graph) -> tuple[list, str]:
    """(outputs, engine) of ``node`` run alone on ``feeds``: ONNX Runtime when it is installed and
    runs it, else onnx.reference; Unsupported when neither does."""
    try:
        values = _run_ort(node, feeds, graph)
    except Exception:  # noqa: BLE001 - ORT cannot run it alone: try the reference
        values = None
    if values is not None:
        return values, "onnxruntime"
    try:
        return run_node(node, [feeds.get(n) if n else None for n in node.input], graph.opsets), "onnx.reference"
    except Exception as exc:  # noqa: BLE001
        raise Unsupported(f"nothing could execute it ({exc.__class__.__name__})") from exc


def _is_row_softmax(node, ctx) -> bool:
    rank = ctx.rank(node.input[0])
    return rank is not None and rank >= 3 and softmax_on_last_axis(node, ctx)


def monte_carlo(node, ctx) -> str:
    """Set the node's float outputs from a sampled run; returns which engine ran it."""
    graph = ctx.graph
    rng = np.random.default_rng(0)
    for attr in node.attribute:
        if any(abs(int(v)) > MAX_ELEMENTS for v in list(attr.ints) + ([attr.i] if attr.type == attr.INT else [])):
            raise Unsupported(f"attribute {attr.name} is too large to run the op on samples")
    for name in node.output:
        dims = graph.static_dims(name) if name else None
        if dims and float(np.prod([d or 1 for d in dims], dtype=np.float64)) > 4 * MAX_ELEMENTS:
            raise Unsupported(f"output {name!r} would be too large to sample")
    feeds, batch, drawn = {}, None, {}
    for name in node.input:
        if not name or not ctx.is_signal(name):
            continue
        dims = _shape(ctx, name)
        per_sample = int(np.prod(dims[1:], dtype=np.float64)) if len(dims) > 1 else 1
        if per_sample > MAX_ELEMENTS:
            raise Unsupported(f"input {name!r} is too large to sample ({per_sample:.3g} elements a sample)")
        if dims and dims[0] is None:
            batch = batch or int(np.clip(MIN_ELEMENTS // max(per_sample, 1), 2, MAX_BATCH))
    for name in node.input:
        if not name:
            continue
        if ctx.is_signal(name):
            dims = _shape(ctx, name)
            dims = [batch if d is None else d for d in dims]
            if float(np.prod(dims, dtype=np.float64)) > 4 * MAX_ELEMENTS:
                raise Unsupported(f"input {name!r} of shape {dims} is too large to sample")
            elem = graph.elem_type(name) or onnx.TensorProto.FLOAT
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            parts = drawn.setdefault(name, {})
            feeds[name] = draw_samples(ctx.signal(name), dims, rng, parts).astype(dtype)
        else:
            value = ctx.value(name)
            if value is None:
                raise Unsupported(f"input {name!r} is neither signal nor a known constant")
            feeds[name] = value
    values, engine = run_alone(node, feeds, graph)
    if _is_row_softmax(node, ctx) and node.input[0] in drawn and "element" in drawn[node.input[0]]:
        parts = drawn[node.input[0]]
        ctx.softmax_tilt[node.output[0]] = softmax_tilt(feeds[node.input[0]].astype(np.float64), parts["element"],
                                                        np.asarray(values[0], np.float64), parts["within"])
        ctx.query_overlap[node.output[0]] = query_overlap(np.asarray(values[0], np.float64))
    for name, value in zip([o for o in node.output if o], values):
        if name not in graph.signal_tensors:
            continue
        set_from_samples(name, value, ctx)
    return engine


def set_from_samples(name: str, value, ctx) -> None:
    """Set ``name``'s signal from samples (batch first): per-channel (axis 1) mean and variance,
    the variance of the per-sample mean over positions as the shared part."""
    value = np.asarray(value, np.float64)
    if value.size == 0 or not np.issubdtype(value.dtype, np.floating):
        return
    positions = ctx.has_positions(name)
    rank = value.ndim
    if rank >= 2 and 1 < value.shape[1] <= MAX_CHANNELS:
        axes = [None, Sites.full(value.shape[1])] + [None] * (rank - 2)
        moved = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)
        mean, var = moved.mean(axis=1), moved.var(axis=1)
        shape = [1, value.shape[1]] + [1] * (rank - 2)
        if positions:
            per_sample = np.moveaxis(value, 1, -1).reshape(value.shape[0], -1, value.shape[1]).mean(axis=1)
            shared = np.clip(per_sample.var(axis=0), 0.0, var)
        else:
            shared = var
        ctx.set(name, gaussian(name, mean.reshape(shape), shared.reshape(shape), (var - shared).reshape(shape),
                               axes, positions))
    else:
        mean, var = float(value.mean()), float(value.var())
        ctx.set(name, gaussian(name, mean, var if not positions else 0.0, 0.0 if not positions else var,
                               [None] * max(rank, 1), positions))
