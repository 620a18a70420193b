"""Ops that move, mix or mask values: identity, reshape-like, concat, pad, dropout."""
from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..quadrature import channel_stats, channelwise
from .common import attributes, has_positions, signal_inputs


def identity(node, rule, ctx):
    x = signal_inputs(node, ctx)[0]
    ctx.set(node.output[0], ctx.moments[x], ctx.expr(x))


def reshape(node, rule, ctx):
    """Values unchanged, positions rearranged: the statistics stay; rank <= 2 has no positions."""
    x = signal_inputs(node, ctx)[0]
    out = node.output[0]
    m = ctx.moments[x]
    rank = ctx.rank(out)
    m = m.without_positions() if rank is not None and not has_positions(rank) else m
    ctx.set(out, m, _channels_kept(ctx, x, out, rank))


def _channels_kept(ctx, x, out, rank):
    """Per-channel statistics survive when axis 1 is the same channel axis before and after
    (a Flatten of (N, C, 1, 1), a Squeeze of trailing ones)."""
    dims_in, dims_out = ctx.graph.static_dims(x), ctx.graph.static_dims(out)
    if not dims_in or not dims_out or len(dims_in) < 2 or len(dims_out) < 2:
        return None
    if dims_in[1] != dims_out[1] or not dims_in[1]:
        return None
    if any(d != 1 for d in dims_in[2:]) or any(d != 1 for d in dims_out[2:]):
        return None
    stats = channel_stats(ctx.expr(x), 1, dims_in[1])
    if stats is None:
        return None
    mean_c, shared_c, within_c = stats
    var_c = shared_c + within_c
    return channelwise(out, mean_c, var_c, 1.0 if not has_positions(rank) else 0.0, rank or 2, 1)


def dropout(node, rule, ctx):
    """Inverted dropout with ratio r in training mode: y = x * mask / (1 - r).

    Exact for any input mean: E[y] = mu, E[y^2] = (nu + mu^2) / (1 - r), so
    var = (nu + mu^2) / (1 - r) - mu^2 (the reference's nu / (1 - r) is exact only at mu = 0).
    The mask averages out over positions, so the shared variance is unchanged.
    """
    attrs = attributes(node)
    x, out = node.input[0], node.output[0]
    ratio = attrs.get(rule.get("ratio_attr", "ratio"), rule.get("default_ratio", 0.5))
    training = False
    ri, ti = rule.get("ratio_input"), rule.get("training_input")
    if ri is not None and len(node.input) > ri and node.input[ri]:
        value = ctx.value(node.input[ri])
        ratio = float(value) if value is not None else ratio
    if ti is not None and len(node.input) > ti and node.input[ti]:
        value = ctx.value(node.input[ti])
        training = bool(value) if value is not None else True
    m = ctx.moments[x]
    if not training or ratio <= 0:
        ctx.set(out, m, ctx.expr(x))
        return
    ratio = min(float(ratio), 0.999999)
    var = m.second_moment / (1.0 - ratio) - m.mean ** 2
    rank = ctx.rank(out)
    ctx.set(out, Moments(m.mean, var, var if not has_positions(rank) else m.shared))


def _axis_size(ctx, name, axis):
    dims = ctx.graph.static_dims(name)
    if dims is None or not -len(dims) <= axis < len(dims):
        return None
    return dims[axis]


def concat(node, rule, ctx):
    """A mixture of the inputs weighted by their sizes along the axis (constants included)."""
    axis = int(attributes(node).get(rule.get("axis_attr", "axis"), 0))
    parts = []
    for name in node.input:
        if not name:
            continue
        size = _axis_size(ctx, name, axis)
        if ctx.is_signal(name):
            m = ctx.moments[name]
        else:
            value = ctx.value(name)
            if value is None:
                continue
            value = value.astype(np.float64)
            m = Moments(float(value.mean()), float(value.var()), float(value.var()))
        parts.append((size if size else 1, m))
    total = sum(p for p, _ in parts)
    mean = sum(p * m.mean for p, m in parts) / total
    second = sum(p * m.second_moment for p, m in parts) / total
    shared_second = sum(p * (m.shared + m.mean ** 2) for p, m in parts) / total
    var = second - mean ** 2
    rank = ctx.rank(node.output[0])
    shared = var if not has_positions(rank) else shared_second - mean ** 2
    ctx.set(node.output[0], Moments(mean, var, shared).clamped())


def pad(node, rule, ctx):
    """Constant padding mixes the input with the pad value by the padded fraction f."""
    attrs = attributes(node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x, out = node.input[0], node.output[0]
    m = ctx.moments[x]
    if mode != "constant":
        ctx.set(out, m)
        return
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        v = ctx.value(node.input[2])
        value = float(v) if v is not None and v.size == 1 else 0.0
    elif "value" in attrs:
        value = float(attrs["value"])
    dims_in, dims_out = ctx.graph.static_dims(x), ctx.graph.static_dims(out)
    f = 0.0
    if dims_in and dims_out and len(dims_in) == len(dims_out):
        inner_in = [d for d in dims_in[1:]]
        inner_out = [d for d in dims_out[1:]]
        if all(inner_in) and all(inner_out):
            f = 1.0 - float(np.prod(inner_in)) / float(np.prod(inner_out))
    mean = (1 - f) * m.mean + f * value
    second = (1 - f) * m.second_moment + f * value ** 2
    var = second - mean ** 2
    ctx.set(out, Moments(mean, var, (1 - f) * m.shared).clamped())
