"""Affine layers with a weight tensor: Conv, ConvTranspose, Gemm, MatMul.

With the canonical weight C[j, i, t] (see layouts.py) and, per input site,
channel i carrying x_i = m_i + s_i + e_i (s_i the part shared by all positions
of a sample, e_i independent from position to position; channels independent),
output unit j at output site o reads tap t from input site idx(o, t) when the
tap lies inside the input (valid(o, t)), zero padding otherwise:

    mean_jo   = alpha * sum_{i,t valid} C[j,i,t] m_i(idx(o,t))       (+ beta * b_j)
    within_jo = alpha^2 * sum_{i,t valid} C[j,i,t]^2 nu_e,i(idx(o,t))
    shared_jo = alpha^2 * sum_i ( sum_{t valid} C[j,i,t] sqrt(nu_s,i(idx(o,t))) )^2

The output is a fresh Gaussian per site (a sum over the fan-in). Sites keep
output positions next to padded borders apart from the interior, so the border
effect of zero padding compounds layer after layer as it does in the network.
A scheme, when active, first draws C (AutoInit: E[y^2] = 1 over all sites).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxInitError
from ..layouts import Layout, conv_transpose_tap_fraction
from ..correlation import cross_terms, pointwise, remember_layer_correlation
from ..moments import Moments
from ..signal import (SITE_BUDGET, Sites, element_cumulants, gaussian, pool_positions, pool_sites, site_count,
                      with_element_shape)
from ..windows import window
from .common import Unsupported, attributes
from .transformer import matmul_product


FEW_TAPS = 64      # fan-in (input channels x taps per output) up to which a conv's output shape is kept,
FEW_CHANNELS = 4   # for convs with a spatial kernel and at most this many input channels per group (depthwise)
FEW_INPUTS = 32    # ... and for pointwise convs reading this many channels at most (LCNet-050's 8 to 32)


@dataclass
class WeightedLayer:
    """What a scheme needs to know to draw one layer's weights."""

    node: object
    weight: str
    bias: str | None
    layout: Layout
    input_moments: Moments
    inputs: tuple          # (mean, shared, within): (C_in, T, O) gathered per tap and output site
    site_weights: np.ndarray   # (O,) share of output positions per site
    out_axes: tuple            # output Sites per tensor axis (channel axis filled in by the caller)
    scale: float               # alpha: y = alpha * (W x) + beta * b
    dtype: np.dtype
    inverse: np.ndarray | None = None   # output site -> column of ``inputs`` (distinct sites only)
    cross: tuple | None = None          # (a, R, part): input units correlated through an earlier layer

    def __post_init__(self):
        self.site_weights = np.asarray(self.site_weights, np.float64).reshape(-1)
        self.site_weights = self.site_weights / self.site_weights.sum()

    @property
    def tap_fraction(self) -> float:
        """Average share of kernel taps inside the input, over output positions."""
        valid = self.inputs[3]
        return float(np.sum(np.mean(valid, axis=0) * self.site_weights))

    @property
    def effective_second_moment(self) -> float:
        """alpha^2 * f * E[x^2]: what one weight multiplies on average."""
        return self.scale ** 2 * self.tap_fraction * self.input_moments.second_moment

    def unit_stats(self, c: np.ndarray):
        """(mean, shared, within) per output unit and site, shape (C_out, O), bias excluded.

        Computed in float32 (BLAS) on the distinct output sites only, then spread out.
        """
        groups = self.layout.group_count
        out, fan, taps = c.shape
        mean_g, shared_g, within_g, _ = self.inputs
        sites = mean_g.shape[-1]
        c64 = c.astype(np.float32, copy=False).reshape(groups, out // groups, fan, taps)
        a2 = np.float32(self.scale ** 2)
        means, shareds, withins = [], [], []
        for g in range(groups):
            block = slice(g * fan, (g + 1) * fan)
            w = c64[g]
            m = mean_g[block].reshape(fan * taps, sites)
            e = within_g[block].reshape(fan * taps, sites)
            w2 = w.reshape(-1, fan * taps)
            squares = w2 * w2
            means.append(np.float32(self.scale) * (w2 @ m))
            withins.append(a2 * (squares @ e))
            s = shared_g[block]
            if np.any(s > 0):
                if taps == 1:   # one tap per channel: sum_i (C_ji sqrt(nu_s,i))^2 = C^2 @ nu_s
                    shareds.append(a2 * (squares @ s.reshape(fan, sites)))
                else:           # per input channel, the taps' sum first: (fan, out, sites) by batched BLAS
                    partial = np.matmul(w.transpose(1, 0, 2), np.sqrt(s))
                    shareds.append(a2 * np.square(partial, out=partial).sum(axis=0))
            else:
                shareds.append(np.zeros((out // groups, sites), np.float32))
        if self.cross is not None:
            # E[y_o^2] += sum_{j != k} C_oj C_ok Cov(x_j, x_k), Cov(x_j, x_k) = a_j a_k R_jk; the
            # covariance is of the part that varies from position to position where there are
            # positions (within), of the whole input otherwise (shared)
            a_unit, corr, part = self.cross
            scaled = c64.reshape(out, fan).astype(np.float64) * a_unit[None, :]
            extra = (a2 * (np.sum((scaled @ corr) * scaled, axis=1) - np.sum(scaled * scaled, axis=1)))[:, None]
            if part == "shared":
                shareds = [np.concatenate(shareds) + extra]
            else:
                withins = [np.maximum(np.concatenate(withins) + extra, 0.0)]
        stats = (np.concatenate(a).astype(np.float64) for a in (means, shareds, withins))
        if self.inverse is None:
            return tuple(stats)
        return tuple(a[:, self.inverse] for a in stats)

    def mean_direction(self) -> np.ndarray:
        """D[g, i, t] with (layer mean over units and positions) = alpha/out * sum_{j in g} C[j,i,t] D[g,i,t].

        D is the input mean each weight multiplies, averaged over output sites
        (zero where a tap falls in the padding)."""
        groups = self.layout.group_count
        mean_g = self.inputs[0]
        fan, taps = self.layout.canonical_shape[1:]
        w = self.site_weights if self.inverse is None else np.bincount(
            self.inverse, weights=self.site_weights, minlength=mean_g.shape[-1])
        d = np.asarray(mean_g, np.float64) @ w                       # (C_in, T)
        return np.broadcast_to(d.reshape(-1, fan, d.shape[-1]), (groups, fan, taps))

    def realized_second_moment(self, c: np.ndarray) -> float:
        """E[y^2] over units and positions for weights ``c`` (bias excluded); remembers the stats."""
        self.last_stats = self.unit_stats(c)
        mean, shared, within = self.last_stats
        return float(np.mean((mean ** 2 + shared + within) @ self.site_weights))

    def rescale_stats(self, factor: float) -> None:
        """The weights of the last ``realized_second_moment`` call were multiplied by ``factor``."""
        mean, shared, within = self.last_stats
        self.last_stats = (mean * factor, shared * factor ** 2, within * factor ** 2)


def _find_inputs(node, rule, ctx):
    """(signal input, weight input name, weight index) or raise Unsupported."""
    spec = rule.get("weight", 1)
    candidates = range(len(node.input)) if spec == "any" else [int(spec)]
    for w in candidates:
        if w < len(node.input) and node.input[w] and ctx.graph.is_weight(node.input[w]):
            others = [n for i, n in enumerate(node.input[:2]) if i != w and n and ctx.is_signal(n)]
            if others:
                return others[0], node.input[w], w
    raise Unsupported("no weight initializer beside a signal input")


def _shape_and_dtype(weight: str, ctx) -> tuple:
    """A weight's shape and numpy dtype, from its TensorProto when it has one (a large weight
    is not read just for that)."""
    known = ctx.graph.weight_shape(weight)
    if known is not None and known[1] is not None:
        return known
    current = ctx.value(weight)
    if current is None:
        raise Unsupported(f"weight {weight!r} has no readable value")
    return current.shape, current.dtype


def weight_layout(node, rule, weight_shape, weight_index, attrs) -> Layout:
    """How the weight input of ``node`` (at ``weight_index``, shaped ``weight_shape``) maps to
    canonical (out, fan, taps) weights under ``rule``."""
    kind = rule.get("fan_in")
    group_attr = rule.get("group_attr")
    groups = int(attrs.get(group_attr, 1)) if group_attr else 1
    return Layout(kind, tuple(weight_shape), groups=groups,
                  trans_b=bool(attrs.get("transB", 0)), weight_first=(weight_index == 0))


def _per_channel(array: np.ndarray, axis: int, channels: int, sites=None) -> np.ndarray:
    """Broadcast a site array's channel axis (size 1 or ``channels``) to ``channels``; move it first.
    ``sites``: the signal's Sites on that axis; classes of channels (a gate computed by a conv
    along the channel axis, as ECA's, keeps its border channels apart and pools the rest) are
    spelled out to one entry per channel."""
    if sites is not None and sites.size not in (1, channels) and sites.length == channels:
        array = np.take(array, sites.index_of(np.arange(channels)), axis=axis)
    array = np.moveaxis(array, axis, 0)
    if array.shape[0] == channels:
        return array
    if array.shape[0] == 1:
        return np.broadcast_to(array, (channels,) + array.shape[1:])
    raise Unsupported(f"input has {array.shape[0]} channels where the weight expects {channels}")


def _few_taps_shape(signal, layout, c, x_signal, alpha):
    """A conv summing few taps per output (depthwise: 9 to 49) of a skewed, heavy-tailed input
    is not Gaussian. With the input's element part per channel (nu_e, kappa_3, kappa_4) and
    independent taps, the output's element part has
        kappa_k(y_j) = alpha^k sum_{i,t} C[j,i,t]^k kappa_k(x_i),   k = 2, 3, 4,
    and its skewness kappa_3 / kappa_2^1.5 and excess kurtosis kappa_4 / kappa_2^2 shape the
    output's element root (signal.with_element_shape)."""
    cumulants = element_cumulants(x_signal)
    if cumulants is None:
        return signal
    out, fan, taps = c.shape
    groups = layout.group_count
    channels = fan * groups
    if any(len(k) not in (1, channels) for k in cumulants):
        return signal
    unit_group = np.arange(out) // (out // groups)
    index = unit_group[:, None] * fan + np.arange(fan)[None, :]                 # (out, fan) input channel
    c = c.astype(np.float64)
    k2, k3, k4 = (np.broadcast_to(k, (channels,))[index] for k in cumulants)
    s2 = np.sum(k2 * np.sum(c ** 2, axis=2), axis=1)
    s3 = np.sum(k3 * np.sum(c ** 3, axis=2), axis=1) * np.sign(alpha)
    s4 = np.sum(k4 * np.sum(c ** 4, axis=2), axis=1)
    ok = s2 > 0
    skew = np.where(ok, s3 / np.maximum(s2, 1e-300) ** 1.5, 0.0)
    kurt = np.where(ok, s4 / np.maximum(s2, 1e-300) ** 2, 0.0)
    if max(np.max(np.abs(skew)), np.max(np.abs(kurt))) < 1e-3:
        return signal
    return with_element_shape(signal, skew, kurt)


def _conv_inputs(node, layout, x, ctx, attrs):
    """Input statistics gathered per (channel, tap, output site), and the output sites."""
    sig = ctx.signal(x)
    rank = sig.rank
    if rank != len(layout.shape):
        raise Unsupported(f"input rank {rank} does not match a {len(layout.shape)}-d kernel")
    mean, var, shared = sig.stats()
    within = var - shared
    channels = layout.canonical_shape[1] * layout.group_count
    dims = ctx.graph.static_dims(x) or [None] * rank
    if dims[1] is not None and dims[1] != channels:   # ONNX Runtime would refuse the model as well
        raise OnnxInitError(f"{node.op_type} {node.name or node.output[0]!r}: its input has {dims[1]} channels, "
                            f"its weight expects {channels} ({layout.canonical_shape[1]} per group x "
                            f"{layout.group_count} groups): not a valid model")
    stats = [_per_channel(a[0], 0, channels, sig.axes[1]) for a in (mean, shared, within)]
    kernel = list(attrs.get("kernel_shape", layout.shape[2:]))
    if kernel != list(layout.shape[2:]):
        raise Unsupported(f"kernel_shape {kernel} does not match the weight's {list(layout.shape[2:])}")
    lengths = [s.length if s is not None else d for s, d in zip(sig.axes[2:], dims[2:])]
    win = window(attrs, kernel, list(sig.axes[2:]), lengths, max_sites=SITE_BUDGET // max(layout.shape[0], 1))
    taps = int(np.prod(kernel))
    full = tuple(kernel) + tuple(1 if s is None else s.size for s in win.out_sites)
    valid = np.broadcast_to(win.valid_mask(), full).reshape(taps, -1)
    # output sites reading the same input sites through the same valid taps are computed once
    source = np.arange(int(np.prod(stats[0].shape[1:]))).reshape(stats[0].shape[1:]).astype(np.float64)
    pattern = win.gather(source[None], fill=-1.0)[0].reshape(taps, -1)
    _, first, inverse = np.unique(pattern, axis=1, return_index=True, return_inverse=True)
    gathered = [win.gather(a).reshape(channels, taps, -1)[:, :, first].astype(np.float32) for a in stats]
    weights = np.ones(1)
    for s in win.out_sites:
        weights = np.multiply.outer(weights, s.counts / s.length if s is not None else np.ones(1))
    out_axes = (None, None) + tuple(win.out_sites)
    return (*gathered, valid), weights.reshape(-1), out_axes, inverse.reshape(-1)


def _transpose_inputs(node, layout, x, ctx, attrs):
    """ConvTranspose: positions pooled; each output position sees a share f of the taps on average."""
    sig = ctx.signal(x)
    mean, var, shared = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    channels = layout.canonical_shape[1] * layout.group_count
    pooled = []
    for a in (mean, shared, var - shared):
        a = np.moveaxis(a * w, 1, 0).reshape(a.shape[1], -1).sum(axis=1) / np.moveaxis(w, 1, 0).reshape(
            w.shape[1], -1).sum(axis=1)
        pooled.append(np.broadcast_to(a, (channels,)))
    taps = layout.canonical_shape[2]
    dims = ctx.graph.static_dims(x)
    out_dims = ctx.graph.static_dims(node.output[0])
    kernel = list(attrs.get("kernel_shape", layout.shape[2:]))
    share = conv_transpose_tap_fraction(attrs, dims[2:] if dims else [None] * len(kernel), kernel,
                                        out_dims[2:] if out_dims else None)
    gathered = [np.broadcast_to(p[:, None, None], (channels, taps, 1)) for p in pooled]
    gathered[0] = gathered[0] * share
    gathered[2] = gathered[2] * share
    gathered[1] = gathered[1] * share
    valid = np.full((taps, 1), share)
    return (*gathered, valid), np.ones(1), (None,) * sig.rank


def _dense_inputs(layout, x, ctx, out):
    """Gemm/MatMul: the contraction axis is the last input axis (the one before it for W @ x)."""
    sig = ctx.signal(x)
    mean, var, shared = sig.stats()
    channels = layout.canonical_shape[1]
    axis = sig.rank - 2 if layout.weight_first else sig.rank - 1
    if layout.group_count != 1:
        m = sig.moments()
        stats = [np.full((channels, 1, 1), v) for v in (m.mean, m.shared, m.within)]
        return (*stats, np.ones((1, 1))), np.ones(1), None
    rest_axes = sig.axes[:axis] + sig.axes[axis + 1:]
    stats = []
    for a in (mean, shared, var - shared):
        moved = _per_channel(a, axis, channels, sig.axes[axis])
        stats.append(moved.reshape(channels, 1, -1).astype(np.float32))
    weights = np.broadcast_to(np.moveaxis(sig.site_weights(), axis, 0)[0:1], (1,) + moved.shape[1:]).reshape(-1)
    out_rank = ctx.rank(out) or sig.rank
    if out_rank != sig.rank:
        return (*stats, np.ones((1, stats[0].shape[-1]))), weights, None
    out_axes = list(rest_axes)
    out_axes.insert(axis, None)
    return (*stats, np.ones((1, stats[0].shape[-1]))), weights, (tuple(out_axes), axis, moved.shape[1:])


def weighted(node, rule, ctx):
    attrs = attributes(node)
    try:
        x, weight, w_index = _find_inputs(node, rule, ctx)
    except Unsupported:
        if node.op_type == "MatMul" and all(ctx.is_signal(n) for n in node.input[:2]):
            return matmul_product(node, ctx)
        raise
    if node.op_type == "Gemm" and attrs.get("transA", 0) and w_index == 1:
        raise Unsupported("Gemm with transA on the signal input")
    bias_index = rule.get("bias")
    bias = node.input[bias_index] if bias_index is not None and len(node.input) > bias_index else None
    bias = bias if bias and ctx.graph.is_constant(bias) else None
    shape, dtype = _shape_and_dtype(weight, ctx)
    layout = weight_layout(node, rule, shape, w_index, attrs)
    try:
        fits = int(np.prod(layout.canonical_shape, dtype=np.int64)) == int(np.prod(shape, dtype=np.int64))
    except (IndexError, ValueError):
        fits = False
    if not fits:
        raise Unsupported(f"weight {weight!r} of shape {shape} does not fit {layout.kind}")
    alpha = float(attrs.get(rule.get("scale_attr"), 1.0)) if rule.get("scale_attr") else 1.0
    beta = float(attrs.get(rule.get("bias_scale_attr"), 1.0)) if rule.get("bias_scale_attr") else 1.0
    out = node.output[0]
    dense = None
    inverse = None
    if layout.kind == "conv":
        inputs, site_weights, out_axes, inverse = _conv_inputs(node, layout, x, ctx, attrs)
    elif layout.kind == "conv_transpose":
        inputs, site_weights, out_axes = _transpose_inputs(node, layout, x, ctx, attrs)
    else:
        inputs, site_weights, dense = _dense_inputs(layout, x, ctx, out)
        out_axes = None
    cross = None
    if pointwise(layout):
        sig = ctx.signal(x)
        unit_axis = 1 if layout.kind == "conv" else sig.rank - 2 if layout.weight_first else sig.rank - 1
        cross = cross_terms(sig, ctx, unit_axis)
        if cross is not None and cross[1].shape[0] != layout.canonical_shape[1]:
            cross = None   # the units were regrouped since (a reshape): not the ones this layer reads
    layer = WeightedLayer(node, weight, bias, layout, ctx.moments[x], inputs, site_weights, out_axes,
                          alpha, dtype, inverse, cross)
    layer.last_stats = None
    if ctx.scheme is not None:
        ctx.scheme.draw_weighted(layer, ctx)
    stats = layer.last_stats or layer.unit_stats(layout.to_canonical(ctx.value(weight)))
    mean, shared, within = stats
    if bias is not None:
        b = np.asarray(ctx.value(bias), np.float64).reshape(-1)
        mean = mean + beta * (b[:, None] if b.size == mean.shape[0] else b.mean())
    n_out = mean.shape[0]
    positions = ctx.has_positions(out)
    if layout.kind in ("conv", "conv_transpose"):
        axes = list(out_axes)
        axes[1] = Sites.full(n_out) if n_out > 1 else None
        site_shape = [1 if s is None else s.size for s in axes]
        arrays = [a.reshape(site_shape) for a in (mean, shared, within)]
        if site_count(axes) > SITE_BUDGET:
            *arrays, axes = pool_positions(*arrays, axes, layer.site_weights.reshape([1, 1] + site_shape[2:]))
        signal = gaussian(out, *arrays, axes, positions)
        _, fan, taps = layout.canonical_shape
        if layout.kind == "conv" and positions and (taps > 1 and fan <= FEW_CHANNELS and fan * taps <= FEW_TAPS
                                                    or taps == 1 and fan <= FEW_INPUTS):
            signal = _few_taps_shape(signal, layout, layout.to_canonical(ctx.value(weight)), ctx.signal(x), alpha)
    elif dense is not None:
        axes, axis, rest_shape = dense
        axes = list(axes)
        axes[axis] = Sites.full(n_out) if n_out > 1 else None
        arrays = [np.moveaxis(a.reshape((n_out,) + tuple(rest_shape)), 0, axis) for a in (mean, shared, within)]
        if site_count(axes) > SITE_BUDGET:   # (tokens x windows) x units: keep the units' sites only
            w = np.expand_dims(np.reshape(site_weights, tuple(rest_shape)), axis)
            *arrays, axes = pool_sites(*arrays, axes, w, keep=(0, axis))
        signal = gaussian(out, *arrays, axes, positions)
    else:
        w = site_weights / site_weights.sum()
        pooled = [float(np.mean(a @ w)) for a in (mean, shared, within)]
        spread = float(np.mean((mean ** 2) @ w)) - pooled[0] ** 2
        rank = ctx.rank(out) or 2
        signal = gaussian(out, pooled[0], pooled[1] + spread, pooled[2], (None,) * rank, positions)
    ctx.set(out, signal)
    if x in ctx.row_shared:   # a dense layer on token rows keeps the share common to all tokens
        ctx.row_shared[out] = ctx.row_shared[x]
    layer.cross = None   # kept layers must not hold an earlier layer's unit correlation (out x out)
    ctx.layer_outputs[out] = layer
    remember_layer_correlation(layer, signal, ctx)
    ctx.record_layer(layer, ctx.moments[out])
