"""Normalization: BatchNormalization (training or inference mode), InstanceNormalization and
GroupNormalization, and fixed-output ops."""
from __future__ import annotations

import numpy as np

from ..signal import Signal, Sites, align, gaussian
from .common import Unsupported, attributes


def _is_training(node, attrs) -> bool:
    if "training_mode" in attrs:
        return bool(attrs["training_mode"])
    # Before opset 14 the extra running-statistics outputs mark a training graph.
    return len([o for o in node.output if o]) > 1


def channel_moments(sig: Signal):
    """Per channel (axis 1): (mean_c, var_c) pooled over the other sites, each shaped (C or 1,)."""
    mean, var, _ = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    axes = tuple(a for a in range(mean.ndim) if a != 1)
    total = w.sum(axis=axes)
    m = (w * mean).sum(axis=axes) / total
    second = (w * (var + mean ** 2)).sum(axis=axes) / total
    return m, np.maximum(second - m * m, 0.0)


def _affine(ctx, out, sig: Signal, scale: np.ndarray, shift: np.ndarray):
    """y = scale_c * x + shift_c, channel axis 1, on the signal's grid."""
    shape = (1, -1) + (1,) * max(sig.rank - 2, 0)
    if sig.linear is not None:
        _affine_linear(ctx, out, sig, scale.reshape(shape), shift.reshape(shape))
        return
    roots, (x, a, b), axes = align([sig, scale.reshape(shape), shift.reshape(shape)], sig.rank)
    a_sites, b_sites = a.reshape(a.shape[len(roots):]), b.reshape(b.shape[len(roots):])
    mean, var, shared = (np.asarray(v) for v in sig.stats())
    site_shape = np.broadcast_shapes(x.shape, a.shape, b.shape)[len(roots):]
    stats = (np.broadcast_to(a_sites * mean + b_sites, site_shape).copy(),
             np.broadcast_to(a_sites ** 2 * var, site_shape).copy(),
             np.broadcast_to(a_sites ** 2 * shared, site_shape).copy())
    if any(s is not None and t is not None and not s.same_as(t) for s, t in zip(sig.axes, axes)):
        stats = None   # the sites changed: recompute
    ctx.set(out, Signal(roots, x * a + b, axes, stats, affine=sig.affine))


def _affine_linear(ctx, out, sig: Signal, a: np.ndarray, b: np.ndarray):
    """An affine map of a linear (Gaussian) signal stays linear: new mean and coefficients, no grid work."""
    axes = list(sig.axes)
    channels = a.shape[1]
    if channels > 1 and axes[1] is None:
        axes[1] = Sites.full(channels)
    elif channels > 1 and axes[1].size != channels:
        a, b = (np.take(v, axes[1].coords, axis=1) for v in (a, b))
    mean, coefs = sig.linear
    new_mean = a * mean + b
    new_coefs = [a * c for c in coefs]
    m, var, shared = (np.asarray(v) for v in sig.stats())
    site_shape = np.broadcast_shapes(np.shape(new_mean), *[np.shape(c) for c in new_coefs])
    stats = tuple(np.broadcast_to(v, site_shape).copy() for v in (new_mean, a * a * var, a * a * shared))
    ctx.set(out, Signal(sig.roots, None, axes, stats, linear=(new_mean, new_coefs)))


def batchnorm(node, rule, ctx):
    """y = gamma * (x - m) / sqrt(v + eps) + beta, per channel (axis 1).

    Training mode normalizes with the batch statistics: m, v are the channel's
    mean and variance over batch and positions, which for the realized network
    are those of x itself. Inference mode uses the running statistics. Either
    way the op is a per-channel affine map of x, applied on x's grid.
    """
    attrs = attributes(node)
    x, out = node.input[0], node.output[0]
    names = {k: node.input[rule.get(k)] if len(node.input) > rule.get(k) else "" for k in ("scale", "bias", "mean", "var")}
    if ctx.scheme is not None:
        ctx.scheme.set_affine(node, names["scale"], names["bias"])
    values = {k: ctx.value(n) if n else None for k, n in names.items()}
    gamma = np.asarray(values["scale"] if values["scale"] is not None else 1.0, np.float64).reshape(-1)
    beta = np.asarray(values["bias"] if values["bias"] is not None else 0.0, np.float64).reshape(-1)
    eps = float(attrs.get("epsilon", 1e-5))
    sig = ctx.signal(x)
    if _is_training(node, attrs):
        mean, var = channel_moments(sig)
    else:
        if values["mean"] is None or values["var"] is None:
            mean, var = channel_moments(sig)
        else:
            mean = np.asarray(values["mean"], np.float64).reshape(-1)
            var = np.asarray(values["var"], np.float64).reshape(-1)
    a = gamma / np.sqrt(var + eps)
    b = beta - a * mean
    _affine(ctx, out, sig, a, b)


def _grouped(values, sig: Signal, groups: int):
    """Values with the channel axis spelled out and split into (groups, channels per group)."""
    r = len(sig.roots)
    sites = sig.axes[1]
    shape = values.shape
    if sites is None:
        return values.reshape(shape[:r + 1] + (1, 1) + shape[r + 2:]), None
    channels = sites.length
    if groups <= 0 or channels % groups:
        raise Unsupported(f"{channels} channels do not split into {groups} groups")
    if sites.size != channels:
        values = np.take(values, sites.index_of(np.arange(channels)), axis=r + 1)
        shape = values.shape
    return values.reshape(shape[:r + 1] + (groups, channels // groups) + shape[r + 2:]), channels


def _per_group_normalized(sig: Signal, groups: int, eps: float):
    """(x - m) / sqrt(v + eps) with m, v the mean and variance over the positions (and the
    channels of a group) of one sample: for many positions, those of x given its sample roots
    (the parts equal at every position), pooled over the element roots and the position
    sites. Returns the values (channel axis spelled out when it had sites) and the channel Sites.

    A signal without element roots (its positions were pooled into one Gaussian upstream)
    is normalized with its pooled statistics instead: the output moments, mean 0 and
    variance 1 per channel, are the same either way."""
    r = len(sig.roots)
    element = [i for i, root in enumerate(sig.roots) if root.kind == "element"]
    pooled_roots = element if element else list(range(r))
    values, channels = _grouped(sig.values, sig, groups)
    rank = values.ndim - r            # site axes: batch, group, channel in group, positions...
    w = np.ones(values.shape[:r] + (1,) * rank)
    for i in pooled_roots:
        shape = [1] * values.ndim
        shape[i] = len(sig.roots[i].nodes)
        w = w * sig.roots[i].weights.reshape(shape)
    for a, sites in enumerate(sig.axes[2:]):
        if sites is not None:
            shape = [1] * values.ndim
            shape[r + 3 + a] = sites.size
            w = w * (sites.counts / sites.length).reshape(shape)
    axes = tuple(pooled_roots) + tuple(range(r + 2, values.ndim))
    w = np.broadcast_to(w, values.shape)
    total = w.sum(axis=axes, keepdims=True)
    m = (w * values).sum(axis=axes, keepdims=True) / total
    second = (w * values * values).sum(axis=axes, keepdims=True) / total
    y = (values - m) / np.sqrt(np.maximum(second - m * m, 0.0) + eps)
    if channels:
        y = y.reshape(y.shape[:r + 1] + (channels,) + y.shape[r + 3:])
        return y, Sites.full(channels)
    return y.reshape(y.shape[:r + 1] + y.shape[r + 2:]), None


def group_norm(node, rule, ctx):
    """InstanceNormalization (every channel its own group) and GroupNormalization (``num_groups``):
    y = gamma_c (x - m) / sqrt(v + eps) + beta_c, m and v over the positions and the channels
    of the group, per sample. Per channel the output has mean beta_c and variance gamma_c^2
    for any input; the shape of its law (what the next activation sees) is x's given its
    parts equal at every position, which the normalization removes (shared variance 0)."""
    attrs = attributes(node)
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    if sig.rank < 3:
        raise Unsupported("no positions to normalize over")
    scale = node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 else ""
    if ctx.scheme is not None:
        ctx.scheme.set_affine(node, scale, bias)
    channels = sig.axes[1].length if sig.axes[1] is not None else None
    groups = int(attrs["num_groups"]) if node.op_type == "GroupNormalization" else channels or 1
    values, channel_sites = _per_group_normalized(sig, groups, float(attrs.get("epsilon", 1e-5)))
    normalized = Signal(sig.roots, values, (sig.axes[0], channel_sites) + sig.axes[2:])
    factors = []
    for name in (scale, bias):
        value = ctx.value(name) if name else None
        if value is not None:
            value = np.asarray(value, np.float64).reshape(-1)
            if value.size == groups and channels and channels != groups:
                value = np.repeat(value, channels // groups)     # GroupNormalization-18: per group
            value = value.reshape((1, -1) + (1,) * (sig.rank - 2))
        factors.append(value)
    set_scaled(ctx, out, normalized, *factors)


def set_scaled(ctx, out: str, normalized: Signal, gamma, beta) -> None:
    """out = normalized * gamma + beta on one grid (gamma, beta: arrays broadcasting to the
    tensor, or None)."""
    roots, (y, g, b), axes = align([normalized, gamma, beta], normalized.rank)
    if g is not None:
        y = y * g
    if b is not None:
        y = y + b
    ctx.set(out, Signal(roots, y, axes))


def fixed(node, rule, ctx):
    """Output statistics given by the rule itself (``mean``, ``var``)."""
    out = node.output[0]
    var = float(rule.get("var", 1.0))
    positions = ctx.has_positions(out)
    shared = float(rule.get("shared", 0.0)) if positions else var
    rank = ctx.rank(out) or 1
    ctx.set(out, gaussian(out, float(rule.get("mean", 0.0)), shared, var - shared, (None,) * rank, positions))
