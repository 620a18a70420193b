"""Monte Carlo from the common source: an op whose signal inputs are computed from one tensor.

The plain fallback (montecarlo.py) draws every signal input on its own, which is right for
independent inputs and wrong for ops like Attention (opset 23), whose Q, K and V are
projections of the same tokens: scores and values then share directions, and the output
came out 30% low. Here the subgraph from a tensor that all signal inputs are computed
from (through nodes whose other inputs are constants) runs together with the op
in ONNX Runtime, on samples of that tensor drawn from its statistics, with the weights as
they are at this point of the propagation (already drawn when a scheme draws them). The
farthest such tensor within MAX_NODES is tried first, then nearer ones.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .kinds.common import Unsupported
from .montecarlo import MAX_BATCH, MAX_ELEMENTS, MIN_ELEMENTS, draw_samples, set_from_samples
from .signal import Sites, gaussian

MAX_NODES = 64   # nodes between the source and the op, at most
ATTEMPTS = 3     # subgraph runs tried, from the farthest common source in


def _ancestors(name: str, ctx, limit: int) -> list:
    """Signal tensors ``name`` is computed from, nearest first (breadth first over producers)."""
    order, frontier, seen = [], [name], {name}
    while frontier and len(order) < limit:
        current = frontier.pop(0)
        order.append(current)
        node = ctx.graph.producer.get(current)
        for parent in (node.input if node is not None else []):
            if parent and parent not in seen and ctx.is_signal(parent):
                seen.add(parent)
                frontier.append(parent)
    return order


def common_sources(node, ctx) -> list:
    """Signal tensors every signal input of ``node`` is computed from and that have a static
    shape after the batch axis (a packed (3, batch, ...) QKV does not), the farthest within
    reach first: its channels are the least related (an embedding's output has the rank of
    its input, and attention over such tokens is more peaked than over independent ones)."""
    inputs = [n for n in node.input if n and ctx.is_signal(n)]
    if len(set(inputs)) < 2:
        return []
    chains = [_ancestors(n, ctx, MAX_NODES) for n in inputs]
    shared = set(chains[0]).intersection(*chains[1:])
    found = []
    for name in reversed(chains[0]):
        dims = ctx.graph.static_dims(name) if name in shared else None
        if dims and all(d is not None for d in dims[1:]):
            found.append(name)
    return found


def _subgraph(node, source: str, ctx) -> list:
    """Nodes computing ``node``'s inputs from ``source`` and constants, in graph order."""
    needed, nodes, stack = set(), [], [n for n in node.input if n]
    while stack:
        name = stack.pop()
        if name in needed or name == source:
            continue
        needed.add(name)
        if ctx.value(name) is not None and not ctx.is_signal(name):
            continue
        producer = ctx.graph.producer.get(name)
        if producer is None or len(nodes) >= MAX_NODES:
            raise Unsupported(f"{name!r} is neither computed from {source!r} nor a constant")
        if producer not in nodes:
            nodes.append(producer)
            stack.extend(n for n in producer.input if n)
    order = {id(n): i for i, n in enumerate(ctx.graph.nodes)}
    return sorted(nodes, key=lambda n: order[id(n)]) + [node]


def monte_carlo_from_source(node, ctx) -> str:
    """Set ``node``'s outputs from a run of the subgraph from its inputs' common source (the
    farthest that works of ATTEMPTS candidates)."""
    sources = common_sources(node, ctx)
    if not sources:
        raise Unsupported("its signal inputs have no common source")
    runs = 0
    for source in sources:
        try:
            nodes = _subgraph(node, source, ctx)   # a source every path to the inputs goes through
        except Unsupported:
            continue
        try:
            return _run_from(node, source, nodes, ctx)
        except Unsupported:
            runs += 1
            if runs >= ATTEMPTS:
                break
    raise Unsupported("no subgraph from a common source ran")


def _run_from(node, source: str, nodes: list, ctx) -> str:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Unsupported("needs ONNX Runtime") from exc
    dims = ctx.graph.static_dims(source)
    if not dims or any(d is None for d in dims[1:]):
        raise Unsupported(f"source {source!r} has no static shape to sample")
    per_sample = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
    if per_sample > MAX_ELEMENTS:
        raise Unsupported(f"source {source!r} is too large to sample")
    batch = dims[0] or int(np.clip(MIN_ELEMENTS // max(per_sample, 1), 2, MAX_BATCH))
    produced = {o for n in nodes for o in n.output if o}
    constants = sorted({i for n in nodes for i in n.input if i and i != source and i not in produced})
    initializers = []
    for name in constants:
        value = ctx.value(name)
        if value is None:
            raise Unsupported(f"input {name!r} is not known")
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
    elem = ctx.graph.elem_type(source) or onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "from_source", [helper.make_tensor_value_info(source, elem, [batch] + dims[1:])],
                              [helper.make_tensor_value_info(o, ctx.graph.elem_type(o) or onnx.TensorProto.FLOAT,
                                                             None) for o in node.output if o], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in ctx.graph.opsets.items()])
    model.ir_version = min(model.ir_version, 10)
    signal = ctx.signals.get(source)
    if signal is None:   # released once its last consumer was visited: its pooled moments remain
        m = ctx.moments[source]
        signal = gaussian(source, m.mean, m.shared, m.within, (None,) * len(dims), ctx.has_positions(source))
    samples = draw_samples(signal, [batch] + dims[1:], np.random.default_rng(0))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(None, {source: samples.astype(onnx.helper.tensor_dtype_to_np_dtype(elem))})
    except Exception as exc:  # noqa: BLE001 - the subgraph does not run alone: the plain fallback will
        raise Unsupported(f"the subgraph from {source!r} did not run ({exc.__class__.__name__})") from exc
    for index, (name, value) in enumerate(zip([o for o in node.output if o], values)):
        if name not in ctx.graph.signal_tensors:
            continue
        tokens = _token_axis(node, index, np.ndim(value))
        if tokens is None:
            set_from_samples(name, value, ctx)
        else:
            _set_per_token(name, np.asarray(value, np.float64), tokens, ctx)
    return f"onnxruntime, from {source!r}"


def _token_axis(node, index: int, rank: int):
    """The sequence axis of Attention's output Y: (batch, heads, tokens, width) or (batch, tokens,
    hidden); None for other outputs and ops (their axis 1 is the channel axis)."""
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or index != 0:
        return None
    return {4: 2, 3: 1}.get(rank)


def _set_per_token(name: str, value: np.ndarray, tokens: int, ctx) -> None:
    """Statistics per channel site (every axis but the batch and the tokens), the variance of the
    per-sample mean over the tokens as the shared part: what attention leaves common to all
    tokens of a sequence, which a later mean over the tokens does not average away."""
    channel_axes = [a for a in range(1, value.ndim) if a != tokens]
    mean = value.mean(axis=(0, tokens), keepdims=True)
    var = value.var(axis=(0, tokens), keepdims=True)
    shared = np.clip(value.mean(axis=tokens, keepdims=True).var(axis=0, keepdims=True), 0.0, var)
    axes = [Sites.full(value.shape[a]) if a in channel_axes and value.shape[a] > 1 else None
            for a in range(value.ndim)]
    ctx.set(name, gaussian(name, mean, shared, var - shared, axes, ctx.has_positions(name)))
