"""LSTM / GRU / RNN: gate pre-activations of variance 1, output statistics from a sampled run.

Every gate's pre-activation is  a = W_g x_t + R_g h_(t-1) + b_g  with fan-in I (input width)
plus H (hidden width). AutoInit's rule for it: biases (and LSTM peepholes) 0, each gate's
rows of W and R drawn with one standard deviation s_g such that Var(a_g) = 1. The fan-in
count gives the start,
    s_0 = 1 / sqrt(I E[x^2])   (E[x^2]: the propagated input's second moment, h = 0),
but h is not independent of R (the recurrence grows the state along R's strongest
directions: a GRU measured Var(a) = 1.5 where s^2 (I E[x^2] + H E[h^2]) = 1), so Var(a) is
measured instead: the op runs alone (ONNX Runtime, else onnx.reference) on inputs drawn with
the propagated moments, a = W x_t + R h_(t-1) is computed from the run's states over the
second half of the sequence (the state has settled there), and
    log s_g,(k+1) = log s_g,k - log Var(a_g)(s_k) / p
for FIXED_POINT_STEPS runs, the exponent of Var(a_g) ~ s_g^p taken from the last two (2 at
first: from the fan-in alone; larger as the state grows with s). The last run
gives the outputs' statistics. Without a scheme (inspect) the op's own weights run once.

X is drawn from its propagated moments, independent from step to step, except where it is
another recurrent op's output reached through moves of values only (Squeeze, Transpose,
Reshape, ...; stacked LSTMs): then that run's outputs, moved the same way, are X. They carry
the time correlation of a hidden state, which a next recurrent layer integrates (drawn
independently, a GRU over an LSTM's states came out 1.7 times too small).
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph import SYMBOLIC_DIM
from ..moments import Moments
from ..signal import SITE_BUDGET, Sites, gaussian
from .common import Unsupported, attributes

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
FIXED_POINT_STEPS = 6
BATCH = 256                # sequences sampled per run, at most
MIN_BATCH = 8
MAX_ELEMENTS = 1 << 22     # input samples per run, at most


def _dims(name: str, ctx, layout: int, batch: int) -> list:
    """X's sampled shape: the batch axis (1, or 0 with layout 1) at ``batch``, an unknown
    sequence length at SYMBOLIC_DIM, the input width as the graph gives it."""
    dims = list(ctx.graph.static_dims(name) or [])
    if len(dims) != 3 or dims[2] is None:
        raise Unsupported(f"input {name!r} of a recurrent op needs a known rank 3 and width")
    batch_axis, seq_axis = (1, 0) if layout == 0 else (0, 1)
    dims[batch_axis] = batch
    dims[seq_axis] = dims[seq_axis] or SYMBOLIC_DIM
    return dims


def _constant_batch(node, ctx, layout: int):
    """The batch size a constant initial state or sequence_lens fixes, else None."""
    for index, axis in ((4, 0), (5, 1 if layout == 0 else 0), (6, 1 if layout == 0 else 0)):
        if len(node.input) > index and node.input[index]:
            value = ctx.value(node.input[index])
            if value is not None and value.ndim > axis:
                return int(value.shape[axis])
    return None


MOVES = {"Squeeze", "Unsqueeze", "Transpose", "Reshape", "Identity", "Flatten", "Dropout", "Cast"}


def _upstream_samples(name: str, ctx):
    """(samples of ``name``, the cached tensor they come from): an earlier recurrent run's states
    (ctx.recurrent_samples) moved to ``name`` the way the graph moves them; (None, None) where
    there is no such chain or it does not replay."""
    from ..op_eval import run_node
    chain = []
    while name not in ctx.recurrent_samples:
        node = ctx.graph.producer.get(name)
        if node is None or node.op_type not in MOVES or node.domain not in ("", "ai.onnx") or len(chain) > 8:
            return None, None
        chain.append(node)
        name = node.input[0]
    source, value = name, ctx.recurrent_samples[name]
    try:
        for node in reversed(chain):
            inputs = [value] + [ctx.value(n) if n else None for n in node.input[1:]]
            if node.op_type == "Reshape" and inputs[1] is None:   # a target computed from the batch size
                inputs[1] = _reshape_target(node.output[0], ctx)
            if any(v is None for v, n in zip(inputs[1:], node.input[1:]) if n):
                return None, None
            value = np.asarray(run_node(node, inputs, ctx.graph.opsets)[0])
    except Exception:  # noqa: BLE001 - a move that does not replay at this batch size: draw instead
        return None, None
    return value, source


def _reshape_target(name: str, ctx):
    """The Reshape target that gives ``name`` its static dims, the one dynamic dim (the batch)
    as -1; None when more than one dim is unknown."""
    dims = ctx.graph.static_dims(name)
    if not dims or sum(d is None for d in dims) > 1:
        return None
    return np.array([-1 if d is None else d for d in dims], np.int64)


def _feeds(node, ctx, weights: dict, layout: int, rng, upstream=None):
    """(node to run, feeds): X drawn from its statistics (the whole variance per element),
    weights as given, constant optional inputs as they are, other optional inputs left out
    (ONNX's default: zero initial state, full sequence lengths)."""
    run = onnx.NodeProto()
    run.CopyFrom(node)
    x = node.input[0]
    batch = _constant_batch(node, ctx, layout)
    if upstream is not None and upstream.ndim == 3:
        batch = batch or int(upstream.shape[1 if layout == 0 else 0])
    if batch is None:
        per_sequence = int(np.prod(_dims(x, ctx, layout, 1), dtype=np.int64))
        batch = int(np.clip(MAX_ELEMENTS // max(per_sequence, 1), MIN_BATCH, BATCH))
    dims = _dims(x, ctx, layout, batch)
    if float(np.prod(dims, dtype=np.float64)) > MAX_ELEMENTS:
        raise Unsupported(f"input {x!r} of shape {dims} is too large to sample")
    m = ctx.moments[x]
    if upstream is not None and upstream.ndim == 3 and upstream.shape[2] == dims[2]:
        feeds = {x: upstream.astype(np.float32)}
    else:
        feeds = {x: (m.mean + np.sqrt(m.var) * rng.standard_normal(dims)).astype(np.float32)}
    for i, name in enumerate(node.input[1:], start=1):
        if not name:
            continue
        if name in weights:
            feeds[name] = weights[name]
        elif ctx.value(name) is not None:
            feeds[name] = ctx.value(name)
        else:
            run.input[i] = ""
    return run, feeds


def _run(node, feeds, ctx):
    from ..montecarlo import run_alone
    return [np.asarray(v, np.float64) for v in run_alone(node, feeds, ctx.graph)[0]]


def _pre_activation_variance(x: np.ndarray, y: np.ndarray, w: np.ndarray, r: np.ndarray, layout: int,
                             gates: int, reverse: list) -> np.ndarray:
    """Var(W x_t + R h_(t-1)) over the second half of each direction's steps (the reverse one
    runs from the last step down: its previous state is step t+1's), from a run's input x and
    output states y."""
    if layout == 1:   # (batch, steps, input), (batch, steps, directions, hidden) -> layout 0
        x, y = np.swapaxes(x, 0, 1), np.transpose(y, (1, 2, 0, 3))
    x, y = x.astype(np.float64), y.astype(np.float64)
    steps = x.shape[0]
    parts = []
    for d in range(w.shape[0]):
        settled = range(0, steps - steps // 2) if reverse[d] else range(steps // 2, steps)   # reverse: t runs down
        for t in settled:
            previous = t + 1 if reverse[d] else t - 1
            h = y[previous, d] if 0 <= previous < steps else np.zeros_like(y[0, d])
            parts.append(x[t] @ w[d].T.astype(np.float64) + h @ r[d].T.astype(np.float64))
    a = np.concatenate(parts)
    return a.reshape(a.shape[0], gates, -1).transpose(1, 0, 2).reshape(gates, -1).var(axis=1)


def recurrent(node, rule, ctx):
    attrs = attributes(node)
    layout = int(attrs.get("layout", 0))
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    reverse = [direction == "reverse", True] if direction != "bidirectional" else [False, True]
    hidden = int(attrs.get("hidden_size", 0))
    gates = int(rule.get("gates", GATES.get(node.op_type, 1)))
    x = node.input[0]
    if len(node.input) < 3 or not ctx.is_signal(x) or any(ctx.is_signal(n) for n in node.input[1:3]):
        raise Unsupported("a recurrent op needs a signal input X and constant W and R")
    w_name, r_name = node.input[1], node.input[2]
    w, r = ctx.value(w_name), ctx.value(r_name)
    if w is None or r is None or w.ndim != 3 or r.ndim != 3 or not hidden or w.shape[1] != gates * hidden:
        raise Unsupported("W and R must be known [directions, gates x hidden, width] weights")
    rng = np.random.default_rng(0)
    upstream, source = _upstream_samples(x, ctx)
    weights = {w_name: w.astype(np.float32), r_name: r.astype(np.float32)}
    zeroed = [n for n in (node.input[3:4] + node.input[7:8]) if n and ctx.value(n) is not None]   # B, P
    scheme = ctx.scheme
    draws = scheme is not None and hasattr(scheme, "draw_unit") and ctx.graph.is_weight(w_name) \
        and ctx.graph.is_weight(r_name)
    scale = None
    if draws:
        width, directions = w.shape[2], w.shape[0]
        unit_w = scheme.draw_unit(w_name, (directions * gates, hidden, width)).reshape(w.shape)
        unit_r = scheme.draw_unit(r_name, (directions * gates, hidden, hidden)).reshape(r.shape)
        for name in zeroed:
            weights[name] = np.zeros_like(ctx.value(name), np.float32)
        scale = np.full(gates, 1.0 / np.sqrt(max(width * ctx.moments[x].second_moment, 1e-12)))
        previous = None
        for step in range(FIXED_POINT_STEPS):
            rows = np.repeat(scale, hidden)[None, :, None]   # one scale per gate's block of rows
            weights[w_name] = (unit_w * rows).astype(np.float32)
            weights[r_name] = (unit_r * rows).astype(np.float32)
            run, feeds = _feeds(node, ctx, weights, layout, rng, upstream)
            values = _run(run, feeds, ctx)
            if step < FIXED_POINT_STEPS - 1:
                variance = _pre_activation_variance(feeds[x], values[0], weights[w_name], weights[r_name], layout,
                                                    gates, reverse)
                if not np.all(variance > 0):
                    break
                # Var(a_g) ~ c s_g^p: p = 2 from the fan-in alone, larger as the state grows with s;
                # p from the last two runs (a secant step in log-log), then log s_g -= log Var(a_g) / p
                power = np.full(gates, 2.0)
                if previous is not None:
                    ds = np.log(scale) - np.log(previous[0])
                    dv = np.log(variance) - np.log(previous[1])
                    power = np.where(np.abs(ds) > 1e-9, dv / np.where(np.abs(ds) > 1e-9, ds, 1.0), 2.0)
                    power = np.clip(power, 1.0, 8.0)
                previous = (scale, variance)
                scale = scale * np.exp(-np.log(variance) / power)
    else:
        run, feeds = _feeds(node, ctx, weights, layout, rng, upstream)
        values = _run(run, feeds, ctx)
    if source is not None:
        del ctx.recurrent_samples[source]   # runs can be large: the states serve one next layer
    if draws:
        for name in [w_name, r_name] + zeroed:
            scheme.write(name, weights[name].astype(ctx.value(name).dtype))
        ctx.recurrent.append((node.name or node.output[0], node.op_type, [float(v) for v in scale],
                              Moments(float(values[0].mean()), float(values[0].var()))))
    for index, (name, value) in enumerate(zip(node.output, values)):
        if name and index == 0:
            ctx.recurrent_samples[name] = value.astype(np.float32)
        if name and name in ctx.graph.signal_tensors:
            if index == 0:   # Y: (steps, directions, batch, hidden), or (batch, steps, directions, hidden)
                axes = (0, 1, 3) if layout == 0 else (1, 2, 3)
            else:            # Y_h, Y_c: (directions, batch, hidden), or (batch, directions, hidden)
                axes = (None, 0 if layout == 0 else 1, 2)
            _set_output(name, value, ctx, *axes)


def _set_output(name: str, value: np.ndarray, ctx, step, direction, unit) -> None:
    """Statistics per step, direction and hidden unit, pooled over the batch. The state
    settles from zero over the first steps (a head often reads the last step, which a reverse
    direction reaches after one input), and units differ by their realized weights. Each
    (step, unit) pair is seen only ``batch`` times, so the statistics are taken as separable:
        mean(t, d, u) = mean(t, d) + (mean(d, u) - mean(d)) sqrt(E[y^2](t, d) / E[y^2](d)),
        var(t, d, u)  = var(t, d) var(d, u) / var(d)   (then scaled to the run's E[y^2]),
    the (d, u) ones over every step and sequence (the step axis absent for Y_h, Y_c)."""
    axes_all = range(value.ndim)

    def stats(keep):
        pooled = tuple(a for a in axes_all if a not in keep)
        return value.mean(axis=pooled, keepdims=True), value.var(axis=pooled, keepdims=True)

    by_direction = [a for a in (direction,) if value.shape[a] > 1]
    mean_d, var_d = stats(by_direction)
    mean_u, var_u = stats(by_direction + [unit])
    mean, var = mean_u, var_u
    keep = by_direction + [unit]
    if step is not None and value.shape[step] > 1:
        mean_t, var_t = stats(by_direction + [step])
        # the units' offsets from the direction's mean shrink with the state where it is small (first steps)
        size = np.sqrt(np.divide(var_t + mean_t ** 2, var_d + mean_d ** 2, out=np.ones_like(var_t),
                                 where=var_d + mean_d ** 2 > 0))
        mean = mean_t + (mean_u - mean_d) * size
        var = var_t * np.divide(var_u, var_d, out=np.ones_like(var_u), where=var_d > 0)
        # the separable form keeps each (step, direction)'s and (direction, unit)'s mean, not quite
        # their second moment: the variances are rescaled so that E[y^2] over all is the run's
        spelled = np.broadcast_shapes(mean.shape, var.shape)
        implied = float(np.mean(np.broadcast_to(var + mean ** 2, spelled)))
        mean_square = float(np.mean(np.broadcast_to(mean ** 2, spelled)))
        if implied > mean_square:
            var = var * max(float(np.mean(value ** 2)) - mean_square, 0.0) / (implied - mean_square)
        keep.append(step)
    if int(np.prod([value.shape[a] for a in keep])) > SITE_BUDGET:   # long sequences of wide states
        keep = [a for a in keep if a != unit]
        pooled = tuple(a for a in axes_all if a not in keep)
        mean, var = value.mean(axis=pooled, keepdims=True), value.var(axis=pooled, keepdims=True)
    axes = [Sites.full(value.shape[a]) if a in keep and value.shape[a] > 1 else None for a in axes_all]
    shape = [value.shape[a] if axes[a] is not None else 1 for a in axes_all]
    mean, var = np.broadcast_to(mean, shape), np.broadcast_to(var, shape)
    positions = ctx.has_positions(name)
    ctx.set(name, gaussian(name, mean, 0.0 if positions else var, var if positions else 0.0, axes, positions))
