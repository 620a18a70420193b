"""Ops that transformers are made of: embedding lookups, indexing, LayerNorm, products of activations."""
from __future__ import annotations

import numpy as np

from ..signal import Signal, Sites, align, gaussian
from .common import Unsupported, attributes


def embedding(node, rule, ctx):
    """Gather(W, ids) with W a weight and ids from the input: the output is a row of W.

    For tokens spread over the table, column d has mean_d = avg_v W[v, d] and
    variance var_d over the rows. AutoInit draws W with every column centered
    and unit second moment, so the output has mean 0 and variance 1.
    """
    table_name, out = node.input[0], node.output[0]
    table = ctx.value(table_name)
    if table is None or table.ndim < 2 or int(attributes(node).get("axis", 0)) != 0:
        raise Unsupported("embedding lookup needs a constant table gathered along axis 0")
    if ctx.scheme is not None:
        ctx.scheme.draw_embedding(table_name, table, ctx)
        table = ctx.value(table_name)
    rows = np.asarray(table, np.float64).reshape(table.shape[0], -1)
    mean, var = rows.mean(axis=0), rows.var(axis=0)
    rank = ctx.rank(out) or (table.ndim + 1)
    width = rows.shape[1]
    axes = [None] * rank
    shape = [1] * rank
    if table.ndim == 2 and width > 1:
        axes[-1], shape[-1] = Sites.full(width), width
    else:
        mean, var = np.array(mean.mean()), np.array(var.mean() + mean.var())
    signal = gaussian(out, mean.reshape(shape), 0.0, var.reshape(shape), axes, ctx.has_positions(out))
    ctx.set(out, signal)
    ctx.embeddings.append((node.name or out, table_name, signal.moments()))


def gather(node, rule, ctx):
    """Gather on activations with constant indices: the indexed sites, the axis dropped for a scalar index."""
    data, indices, out = node.input[0], node.input[1], node.output[0]
    if not ctx.is_signal(data):
        return embedding(node, rule, ctx)
    index = ctx.value(indices)
    if index is None:
        raise Unsupported("indices are not constant")
    sig = ctx.signal(data)
    axis = int(attributes(node).get("axis", 0)) % sig.rank
    if axis == 0:
        raise Unsupported("gather along the batch axis")
    index = np.asarray(index, np.int64)
    sites = sig.axes[axis]
    length = sites.length if sites is not None else (ctx.graph.static_dims(data) or [None] * sig.rank)[axis]
    if length:
        index = np.where(index < 0, index + length, index)
    if index.ndim > 1:
        raise Unsupported("multi-dimensional indices")
    r = len(sig.roots)
    flat = index.reshape(-1)
    picked = np.take(sig.values, sites.index_of(flat) if sites is not None else [0], axis=r + axis)
    axes = list(sig.axes)
    if index.ndim == 0:
        picked = np.take(picked, 0, axis=r + axis)
        del axes[axis]
    elif sites is not None and flat.size > 1:
        axes[axis] = Sites.full(flat.size)
    else:
        picked = np.take(picked, [0], axis=r + axis)
        axes[axis] = None
    ctx.set(out, Signal(sig.roots, np.ascontiguousarray(picked), axes))


def layernorm(node, rule, ctx):
    """y = (x - m) / sqrt(v + eps) * gamma + beta, m and v over the axes from ``axis`` on, per sample.

    For many normalized elements m and v are those of x's sites pooled over the
    normalized axes, so the op is an affine map of x on its grid, as BatchNorm
    in training mode is over channels.
    """
    attrs = attributes(node)
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    axis = int(attrs.get("axis", -1)) % sig.rank
    eps = float(attrs.get("epsilon", 1e-5))
    scale = node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 else ""
    if ctx.scheme is not None:
        ctx.scheme.set_affine(node, scale, bias)
    mean, var, _ = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    normalized = tuple(range(axis, sig.rank))
    total = w.sum(axis=normalized, keepdims=True)
    m = (w * mean).sum(axis=normalized, keepdims=True) / total
    second = (w * (var + mean ** 2)).sum(axis=normalized, keepdims=True) / total
    std = np.sqrt(np.maximum(second - m * m, 0.0) + eps)
    r = len(sig.roots)
    values = (sig.values - m.reshape((1,) * r + m.shape)) / std.reshape((1,) * r + std.shape)
    normalized_sig = Signal(sig.roots, values, sig.axes)
    items = [normalized_sig]
    for name in (scale, bias):
        value = ctx.value(name) if name else None
        items.append(np.asarray(value, np.float64) if value is not None else None)
    roots, (y, g, b), axes = align(items, sig.rank)
    if g is not None:
        y = y * g
    if b is not None:
        y = y + b
    ctx.set(out, Signal(roots, y, axes))


def matmul_product(node, ctx):
    """Y = A @ B for two independent activations (attention scores and weighted values).

    With K the contraction length and A, B independent:
        mean = K m_A m_B,   E[Y^2] = K (E[A^2] E[B^2] - m_A^2 m_B^2) + mean^2.
    """
    a, b = ctx.moments[node.input[0]], ctx.moments[node.input[1]]
    dims = ctx.graph.static_dims(node.input[0])
    k = dims[-1] if dims and dims[-1] else None
    if k is None:
        raise Unsupported("unknown contraction length")
    out = node.output[0]
    mean = k * a.mean * b.mean
    var = k * (a.second_moment * b.second_moment - (a.mean * b.mean) ** 2)
    rank = ctx.rank(out) or 2
    positions = ctx.has_positions(out)
    ctx.set(out, gaussian(out, mean, 0.0 if positions else var, var if positions else 0.0,
                          (None,) * rank, positions))
