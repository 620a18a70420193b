"""Affine layers with a weight tensor: Conv, ConvTranspose, Gemm, MatMul.

With the canonical weight C[j, i, t] (see layouts.py), input channel i
carrying x_i = m_i + s_i + e_i (shared s_i, within e_i; channels independent)
and output positions grouped by which taps fall inside the zero-padded input
(pattern P with share q_P; one all-taps pattern away from borders), output unit j
at a position of pattern P has
    mean_jP  = alpha * sum_i m_i * sum_{t in P} C[j,i,t]
    shared_j = alpha^2 * sum_P q_P sum_i nu_s,i * (sum_{t in P} C[j,i,t])^2
    within_j = alpha^2 * sum_P q_P sum_i nu_e,i * sum_{t in P} C[j,i,t]^2 + var_P(mean_jP)
with mean_j = sum_P q_P mean_jP (+ beta * b_j); over all units
mean = avg_j mean_j, var = avg_j (shared_j + within_j) + var_j(mean_j).
Per-channel input statistics come from the input's expression, so the fixed
per-channel means a previous layer leaves behind are followed exactly.
A scheme, when active, first draws C (AutoInit: E[y^2] = 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layouts import Layout, conv_tap_masks, conv_transpose_tap_fraction, tap_fraction
from ..moments import Moments
from ..quadrature import channel_stats, channelwise, pool_stats
from .common import Unsupported, attributes, has_positions


@dataclass
class WeightedLayer:
    """What a scheme needs to know to draw one layer's weights."""

    node: object
    weight: str
    bias: str | None
    layout: Layout
    input_moments: Moments
    channel_in: tuple      # (mean_i, shared_i, within_i) per input channel
    tap_masks: list        # [(valid-tap mask, share of output positions)]
    scale: float           # alpha: y = alpha * (W x) + beta * b
    dtype: np.dtype

    @property
    def tap_fraction(self) -> float:
        return tap_fraction(self.tap_masks)

    @property
    def effective_second_moment(self) -> float:
        """alpha^2 * f * E[x^2]: what one weight multiplies on average."""
        return self.scale ** 2 * self.tap_fraction * self.input_moments.second_moment

    def unit_stats(self, c: np.ndarray):
        """(mean_j, shared_j, within_j) per output unit for canonical weights ``c``, bias excluded."""
        groups = self.layout.group_count
        out, fan, taps = c.shape
        cg = c.astype(np.float64, copy=False).reshape(groups, out // groups, fan, taps)

        def per_group(a):
            a = np.asarray(a, np.float64).reshape(-1)
            if a.size == groups * fan:
                return a.reshape(groups, fan)
            if a.size == fan:
                return np.broadcast_to(a, (groups, fan))
            return np.full((groups, fan), float(a.mean()))

        m, sh, wi = (per_group(a) for a in self.channel_in)
        masks = np.array([mask for mask, _ in self.tap_masks], np.float64).reshape(-1, taps)  # (P, T)
        shares = np.array([share for _, share in self.tap_masks])
        a = self.scale
        by_tap = np.einsum("goit,gi->got", cg, m)                  # sum_i m_i C[j,i,t]
        means = a * by_tap @ masks.T                               # (g, o, P)
        mean = means @ shares
        mean_sq = (means ** 2) @ shares
        partial = cg @ masks.T                                     # (g, o, i, P): sum_{t in P} C
        shared = a * a * np.einsum("goip,gi,p->go", partial ** 2, sh, shares)
        per_tap = np.einsum("goit,gi->got", cg * cg, wi)
        within = a * a * (per_tap @ masks.T) @ shares + np.maximum(mean_sq - mean ** 2, 0.0)
        return mean.reshape(-1), shared.reshape(-1), within.reshape(-1)


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


def _layout(node, rule, weight_shape, weight_index, attrs) -> Layout:
    kind = rule.get("fan_in")
    group_attr = rule.get("group_attr")
    groups = int(attrs.get(group_attr, 1)) if group_attr else 1
    return Layout(kind, tuple(weight_shape), groups=groups,
                  trans_b=bool(attrs.get("transB", 0)), weight_first=(weight_index == 0))


def _channel_axes(layout: Layout):
    """(input channel axis, output channel axis) of the data tensors."""
    if layout.kind == "matmul":
        return (-2, -2) if layout.weight_first else (-1, -1)
    return 1, 1


def _tap_masks(node, layout, x, ctx, attrs):
    taps = layout.canonical_shape[2]
    if layout.kind not in ("conv", "conv_transpose") or len(layout.shape) <= 2:
        return [(np.ones(taps, bool), 1.0)]
    kernel = list(attrs.get("kernel_shape", layout.shape[2:]))
    dims = ctx.graph.static_dims(x)
    in_sizes = dims[2:] if dims and len(dims) == len(layout.shape) else [None] * len(kernel)
    if layout.kind == "conv":
        return conv_tap_masks(attrs, in_sizes, kernel)
    out_dims = ctx.graph.static_dims(node.output[0])
    share = conv_transpose_tap_fraction(attrs, in_sizes, kernel, out_dims[2:] if out_dims else None)
    return [(np.ones(taps, bool), share)]


def _input_channels(layout: Layout, x, ctx):
    """Per-channel statistics of the input, or the pooled ones broadcast."""
    m = ctx.moments[x]
    groups = layout.group_count if layout.kind != "matmul" else 1
    channels = layout.canonical_shape[1] * groups
    axis, _ = _channel_axes(layout)
    stats = channel_stats(ctx.expr(x), axis, channels)
    if stats is None:
        return (np.full(channels, m.mean), np.full(channels, m.shared), np.full(channels, m.within))
    return stats


def weighted(node, rule, ctx):
    attrs = attributes(node)
    x, weight, w_index = _find_inputs(node, rule, ctx)
    bias_index = rule.get("bias")
    bias = node.input[bias_index] if bias_index is not None and len(node.input) > bias_index else None
    bias = bias if bias and ctx.graph.is_constant(bias) else None
    current = ctx.value(weight)
    if current is None:
        raise Unsupported(f"weight {weight!r} has no readable value")
    layout = _layout(node, rule, current.shape, w_index, attrs)
    try:
        layout.to_canonical(current)
    except (IndexError, ValueError) as exc:
        raise Unsupported(f"weight {weight!r} of shape {current.shape} does not fit {layout.kind}") from exc
    alpha = float(attrs.get(rule.get("scale_attr"), 1.0)) if rule.get("scale_attr") else 1.0
    beta = float(attrs.get(rule.get("bias_scale_attr"), 1.0)) if rule.get("bias_scale_attr") else 1.0
    layer = WeightedLayer(node, weight, bias, layout, ctx.moments[x], _input_channels(layout, x, ctx),
                          _tap_masks(node, layout, x, ctx, attrs), alpha, current.dtype)
    if ctx.scheme is not None:
        ctx.scheme.draw_weighted(layer, ctx)
    mean, shared, within = layer.unit_stats(layout.to_canonical(ctx.value(weight)))
    if bias is not None:
        b = np.asarray(ctx.value(bias), np.float64).reshape(-1)
        mean = mean + beta * (b if b.size in (1, mean.size) else b.mean())
    out = node.output[0]
    rank = ctx.rank(out)
    positions = has_positions(rank)
    m = pool_stats(mean, shared + within, shared if positions else shared + within)
    if not positions:
        m = m.without_positions()
    _, out_axis = _channel_axes(layout)
    expr = None
    if layout.kind != "matmul" or layout.group_count == 1:
        total = float(np.sum(shared + within))
        rho = float(np.sum(shared)) / total if positions and total > 0 else (0.0 if positions else 1.0)
        expr = channelwise(out, mean, shared + within, rho, rank or 2, out_axis)
    ctx.set(out, m, expr)
    ctx.record_layer(layer, m)
