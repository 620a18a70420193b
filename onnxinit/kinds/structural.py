"""Ops that move, copy, mix or mask values: identity, reshape-like, expand/tile, concat, pad, dropout."""
from __future__ import annotations

import numpy as np

from ..signal import (GRID_BUDGET, MAX_ROOTS, SITE_BUDGET, Root, Signal, Sites, collapse, constant_signal,
                      edge_sites, gaussian, grid_size, merge_axis, on_roots, pool_sites, site_count, union_roots,
                      with_axes)
from .common import Unsupported, attributes

EXPAND_LIMIT = 1 << 16   # sites a reshape may spell out one by one


def identity(node, rule, ctx):
    x = node.input[0]
    ctx.set(node.output[0], ctx.signal(x))


def broadcast(node, rule, ctx):
    """Expand and Tile: copies of the input's elements, each with its site's law.

    An axis whose elements are all alike (sites None: size 1 before Expand) stays one
    class however far it is copied; Tile along an axis with sites repeats them, spelled
    out. Expand to a higher rank puts the new axes in front. The copies are the same
    values, not independent draws: a later sum over the copied positions (a conv, a
    pool) would see them as independent.
    """
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    rank = ctx.rank(out)
    if rank is None or rank < sig.rank:
        raise Unsupported("output rank unknown")
    r = len(sig.roots)
    values = sig.values.reshape(sig.grid_shape + (1,) * (rank - sig.rank) + sig.values.shape[r:])
    axes = [None] * (rank - sig.rank) + list(sig.axes)
    if node.op_type == "Tile":
        repeats = ctx.value(node.input[1])
        if repeats is None:
            raise Unsupported("repeats unknown")
        for a, (sites, times) in enumerate(zip(axes, np.asarray(repeats, np.int64).reshape(-1))):
            if sites is None or times == 1:
                continue
            if site_count(axes) * int(times) > SITE_BUDGET:
                raise Unsupported("too many sites to spell out")
            if sites.size != sites.length:
                values = np.take(values, sites.index_of(np.arange(sites.length)), axis=r + a)
            values = np.concatenate([values] * int(times), axis=r + a)
            axes[a] = Sites.full(sites.length * int(times))
    ctx.set(out, Signal(sig.roots, values, tuple(axes)))


ROW_WISE = {"BatchNormalization", "Identity", "Cast", "Dropout", "Relu", "LeakyRelu", "Gelu", "HardSwish",
            "Sigmoid", "Tanh", "Mul", "Add", "Sub", "Div", "LayerNormalization", "MatMul", "Gemm", "Erf", "Pow",
            "Sqrt", "Softplus", "Elu", "Selu"}


def _row_share(ctx, name: str, limit: int = 12):
    """The share common to all tokens remembered for rows (``ctx.row_shared``), also through ops
    that act on each row alone (LeViT: Flatten(tokens into rows) -> BatchNormalization -> Reshape;
    OPT: its feed-forward block on (T·N, E) rows, LayerNorm -> fc1 -> ReLU -> fc2), and through
    a sum of rows (the residual Add): share = sum_i share_i nu_i / sum_i nu_i."""
    graph = ctx.graph
    if name in ctx.row_shared:
        return ctx.row_shared[name]
    node = graph.producer.get(name)
    if limit <= 0 or node is None or node.op_type not in ROW_WISE or node.domain not in ("", "ai.onnx"):
        return None
    signals = [i for i in node.input if i and ctx.is_signal(i)]
    if len(signals) == 1:
        return _row_share(ctx, signals[0], limit - 1)
    if node.op_type not in ("Add", "Sub") or len(signals) != 2:
        return None
    shares = [_row_share(ctx, i, limit - 1) for i in signals]
    variances = [ctx.moments[i].var for i in signals]
    if any(share is None for share in shares) or sum(variances) <= 0:
        return None
    return sum(share * v for share, v in zip(shares, variances)) / sum(variances)


def _pooled(ctx, sig: Signal, x, out, batch_first: bool = True):
    """Pooled statistics on fresh roots. The spread of the site means counts as shared
    (fixed per channel) when axis 0 is the batch; when it is not (a seq-first attention,
    nn.MultiheadAttention's (tokens, batch, ...) layout) the sample roots' variance and the
    spread of the means across units (averaged over the tokens of axis 0) stay shared, the
    spread along the tokens does not: a unit's offset is the same for every token, and an
    attention passes it on whole.

    Rows of tokens (T·N, E), as nn.MultiheadAttention flattens its output for the
    projection, have no positions: everything is per row. The share of the variance
    common to all tokens is remembered (``ctx.row_shared``) across such rows, through the
    dense layers on them, and given back when they are reshaped to tokens again."""
    m = sig.moments()
    rank = ctx.rank(out) or 1
    positions = ctx.has_positions(out)
    shared = m.shared
    if not batch_first:
        mean_s, _, shared_s = sig.stats()
        w = np.broadcast_to(sig.site_weights(), mean_s.shape)
        over_tokens = (w * mean_s).sum(axis=0, keepdims=True) / np.maximum(w.sum(axis=0, keepdims=True), 1e-300)
        across_units = float(np.sum(w * (over_tokens - m.mean) ** 2) / np.sum(w))
        shared = min(float(np.sum(w * shared_s) / np.sum(w)) + across_units, m.var)
    if ctx.has_positions(x) and not positions and m.var > 0:
        ctx.row_shared[out] = _common_to_all_tokens(sig, m) / m.var
    elif positions and (share := _row_share(ctx, x)) is not None:
        shared = share * m.var
    return gaussian(out, m.mean, shared if positions else m.var, m.var - shared if positions else 0.0,
                    (None,) * rank, positions)


def _rows_and_tokens(ctx, sig: Signal, x, out, dims_in, dims_out):
    """Tokens flattened to rows, (N, T, ..., D) -> (N·T·..., D), or rows reshaped back to
    tokens, the unit axis D kept (OPT runs its feed-forward block on rows): each unit keeps its
    own mean, variance and share common to all tokens, pooled over the tokens, instead of one
    pooled Gaussian (which turned every unit's fixed offset into variance shared by all units:
    the next attention's values, V = m_u + ..., read it as such and their output came out 0.5
    where 1 was predicted). None when the unit axis is not kept or carries no sites."""
    d_in, d_out = (dims_in or [None])[-1], (dims_out or [None])[-1]
    to_rows = ctx.has_positions(x) and not ctx.has_positions(out)
    to_tokens = ctx.has_positions(out) and not ctx.has_positions(x)
    if d_in is None or d_in != d_out or not (to_rows or to_tokens) or sig.rank < 2 or sig.axes[-1] is None:
        return None
    mean_s, var_s, shared_s = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean_s.shape)
    others = tuple(range(mean_s.ndim - 1))
    total = w.sum(axis=others)

    def per_unit(v):
        return (np.broadcast_to(v, mean_s.shape) * w).sum(axis=others) / total

    mean = per_unit(mean_s)
    var = np.maximum(per_unit(var_s + mean_s ** 2) - mean ** 2, 0.0)
    unit_weights = total / total.sum()
    if to_rows:
        # the share of each unit's variance equal for all tokens (its means are kept apart)
        if np.sum(unit_weights * var) > 0:
            ctx.row_shared[out] = float(np.sum(unit_weights * np.minimum(per_unit(shared_s), var))
                                        / np.sum(unit_weights * var))
        shared, within = var, np.zeros_like(var)
    else:
        share = _row_share(ctx, x)
        if share is None:
            m = sig.moments()
            share = m.shared / m.var if m.var > 0 else 0.0
        shared = np.minimum(share * var, var)
        within = var - shared
    rank = ctx.rank(out) or len(dims_out)
    shape = [1] * (rank - 1) + [mean.size]
    axes = (None,) * (rank - 1) + (sig.axes[-1],)
    return gaussian(out, mean.reshape(shape), shared.reshape(shape), within.reshape(shape), axes,
                    ctx.has_positions(out))


def _kept_suffix(ctx, sig: Signal, x, out, dims_in, dims_out):
    """A reshape that regroups the leading axes with the batch and leaves the trailing ones as
    they are: DeBERTa's heads merged into the batch, (N, H, T, d) -> (N·H, T, d), and back.
    The trailing axes keep their sites (a pattern fixed per token stays one, which an attention
    over the tokens averages instead of keeping whole); what differs along the merged axes (a
    head's unit offsets) becomes a per-row constant: shared. None when no trailing axis is
    kept or has sites, the reshape changes whether the tensor has positions, more than one
    axis merges with the batch, or other than the last two axes are kept."""
    if not dims_in or not dims_out or ctx.has_positions(x) != ctx.has_positions(out):
        return None
    k = 0
    while k < min(len(dims_in), len(dims_out)) - 1 and dims_in[-1 - k] is not None \
            and dims_in[-1 - k] == dims_out[-1 - k]:
        k += 1
    if k != 2 or k >= sig.rank or all(a is None for a in sig.axes[-k:]) \
            or len(dims_in) - k > 2 or len(dims_out) - k > 2:
        # (tokens, units) or (queries, keys) only: window partitions (B, nH, nW, ...) -> (B·nH·nW,
        # ...) and SwinV2's per-window mask view (B·nW, H, N, N) -> (B, nW, H, N, N) stay pooled,
        # its shifted-window projections measured 0.23-0.47 for a predicted 1 with them kept
        return None
    mean_s, var_s, shared_s = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean_s.shape)
    lead = tuple(range(mean_s.ndim - k))
    total = w.sum(axis=lead)

    def pool(v):
        return (np.broadcast_to(v, mean_s.shape) * w).sum(axis=lead) / total

    mean = pool(mean_s)
    var = np.maximum(pool(var_s + mean_s ** 2) - mean ** 2, 0.0)
    # per merged row, the part of the means equal along the kept position axes (all kept axes
    # but the last, the units): its spread across rows is shared, the rest varies by token
    tokens = tuple(range(mean_s.ndim - k, mean_s.ndim - 1))
    row_const = (mean_s * w).sum(axis=tokens, keepdims=True) / w.sum(axis=tokens, keepdims=True) if tokens \
        else mean_s
    shared = np.clip(pool(shared_s) + pool(row_const ** 2) - pool(row_const) ** 2, 0.0, var)
    rank = ctx.rank(out) or len(dims_out)
    shape = [1] * (rank - k) + list(mean.shape)
    return gaussian(out, mean.reshape(shape), shared.reshape(shape), (var - shared).reshape(shape),
                    (None,) * (rank - k) + tuple(sig.axes[-k:]), ctx.has_positions(out))


def _common_to_all_tokens(sig: Signal, m) -> float:
    """The part of the variance equal for every token of a sample, units on the last axis: the
    sample roots' variance and the spread across units of their means averaged over the
    tokens. A pattern fixed per token (position rows) is not part of it: it differs from
    token to token, and an attention over the rows mixes it as it mixes the tokens."""
    mean_s, _, shared_s = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean_s.shape)
    tokens = tuple(range(mean_s.ndim - 1))
    per_unit = (w * mean_s).sum(axis=tokens, keepdims=True) / np.maximum(w.sum(axis=tokens, keepdims=True), 1e-300)
    across_units = float(np.sum(w * (per_unit - m.mean) ** 2) / np.sum(w))
    return min(float(np.sum(w * shared_s) / np.sum(w)) + across_units, m.var)


def _kept_prefix(ctx, sig: Signal, dims_in, dims_out, out):
    """A reshape that leaves the leading axes as they are (dynamic ones included) and regroups
    only static trailing ones, e.g. (steps, batch, directions, hidden) -> (steps, batch,
    directions x hidden): the leading axes keep their sites; the regrouped ones are spelled
    out and reshaped (up to EXPAND_LIMIT elements, else pooled). None when the reshape is not
    of that form or no axis has sites."""
    if not dims_in or not dims_out:
        return None
    k = 0
    while k < min(len(dims_in), len(dims_out)) - 1 and dims_in[k] == dims_out[k]:
        k += 1
    rest_in, rest_out = dims_in[k:], dims_out[k:]
    if k == 0 or any(d is None for d in rest_in + rest_out) or \
            int(np.prod(rest_in)) != int(np.prod(rest_out)) or all(a is None for a in sig.axes):
        return None
    mean, var, shared = sig.stats()
    arrays = [np.broadcast_to(a, mean.shape) for a in (mean, shared, var - shared)]
    prefix = [a.size if a is not None else 1 for a in sig.axes[:k]]
    if int(np.prod(rest_in)) * int(np.prod(prefix)) > EXPAND_LIMIT:
        m, s, w, axes = pool_sites(*arrays, sig.axes, sig.site_weights(), keep=tuple(range(k)))
        shape = prefix + [1] * (len(dims_out) - k)
        return gaussian(out, m.reshape(shape), s.reshape(shape), w.reshape(shape),
                        tuple(axes[:k]) + (None,) * (len(dims_out) - k), ctx.has_positions(out))
    spelled = []
    for array in arrays:
        for a in range(k, len(dims_in)):
            sites = sig.axes[a]
            array = np.take(array, sites.index_of(np.arange(dims_in[a])), axis=a) if sites is not None \
                else np.repeat(array, dims_in[a], axis=a)
        spelled.append(array.reshape(prefix + list(rest_out)))
    axes = tuple(sig.axes[:k]) + tuple(Sites.full(d) if d > 1 else None for d in rest_out)
    return gaussian(out, *spelled, axes, ctx.has_positions(out))


def _expanded(sig: Signal, dims) -> Signal:
    """Every site along every axis after the batch axis spelled out (axes become full)."""
    r = len(sig.roots)
    axes = [None] + [Sites.full(d) for d in dims[1:]]
    values = sig.values
    for a, (have, want) in enumerate(zip(sig.axes, axes)):
        if want is None:
            continue
        if have is None:
            values = np.repeat(values, want.size, axis=r + a)
        elif not have.same_as(want):
            values = np.take(values, have.index_of(want.coords), axis=r + a)
    return Signal(sig.roots, values, tuple(axes))


def _squeezed(sig: Signal) -> Signal:
    """Axes along which every site is the same become 'alike' (None) again."""
    r = len(sig.roots)
    values, axes = sig.values, list(sig.axes)
    for a in range(len(axes)):
        if axes[a] is not None and values.shape[r + a] > 1:
            first = np.take(values, [0], axis=r + a)
            if np.array_equal(np.broadcast_to(first, values.shape), values):
                values, axes[a] = first, None
    return Signal(sig.roots, values, tuple(axes))


def _channels_and_positions_swapped(sig: Signal, kept_in, kept_out, x, out, ctx) -> Signal:
    """A reshape that only adds or drops size-1 axes can still move the channel axis (1) to a
    position axis (ECA attention: pooled (N, C, 1, 1) to (N, 1, C) for a conv along the
    channels) or a position axis to the channel axis (back to (N, C, 1, 1)). A sample root is
    one value per sample at all positions and an element root varies from position to position,
    so the roles swap: channels laid out as positions are independent from site to site (their
    variance goes to an element root), and positions laid out as channels of a tensor without
    positions hold one value per sample (a sample root). Only where one side has positions and
    the other not: a channels-last map (N, H, W, C) split into windows (N, H/7, 7, W/7, 7, C),
    as Swin does, moves axis 1 but keeps positions on both sides, and what every position of a
    sample shares stays shared (before, the last stage's attention read values 95% common to
    all tokens as independent from token to token: predicted 0.05, measured 0.83)."""
    to_positions = any(a_in == 1 and a_out >= 2 for a_in, a_out in zip(kept_in, kept_out))
    to_channels = any(a_in >= 2 and a_out == 1 for a_in, a_out in zip(kept_in, kept_out))
    positions = ctx.has_positions(out)
    if not (to_positions or to_channels) or not sig.roots or positions == ctx.has_positions(x):
        return sig   # positions on both sides (a channels-last (N, H, W, C) split into windows): roles kept
    mean, var, shared = sig.stats()
    if to_positions and positions:
        return gaussian(out, mean, 0.0, var, sig.axes, True)
    if to_channels and not positions:
        return gaussian(out, mean, var, 0.0, sig.axes, False)
    return sig


def transpose(node, rule, ctx):
    sig = ctx.signal(node.input[0])
    perm = list(attributes(node).get("perm", list(range(sig.rank))[::-1]))
    r = len(sig.roots)
    values = np.transpose(sig.values, list(range(r)) + [r + p for p in perm])
    ctx.set(node.output[0], Signal(sig.roots, values, tuple(sig.axes[p] for p in perm)))


def _size_one_axes(node, sig: Signal, ctx) -> Signal | None:
    """Unsqueeze / Squeeze: size-1 axes inserted or removed, every other axis with its sites, in
    the same order, whatever the dims (a seq-first attention's (tokens, batch, 3, width) keeps its
    token and unit sites through Unsqueeze(0)). None when the axes are unknown or a removed axis
    has sites of more than one element."""
    axes = attributes(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.value(node.input[1])
    rank_in = sig.rank
    if axes is None:
        if node.op_type == "Unsqueeze":
            return None
        dims = ctx.graph.static_dims(node.input[0])   # Squeeze without axes: every size-1 axis
        if not dims or any(d is None for d in dims):
            return None
        axes = [a for a, d in enumerate(dims) if d == 1]
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    site_shape = tuple(1 if a is None else a.size for a in sig.axes)
    if node.op_type == "Unsqueeze":
        rank_out = rank_in + len(axes)
        inserted = sorted({a % rank_out for a in axes})
        if len(inserted) != len(axes):
            return None
        new_axes, shape = list(sig.axes), list(site_shape)
        for a in inserted:
            new_axes.insert(a, None)
            shape.insert(a, 1)
    else:
        removed = {a % rank_in for a in axes}
        if any(sig.axes[a] is not None and sig.axes[a].length != 1 for a in removed):
            return None
        new_axes = [a for i, a in enumerate(sig.axes) if i not in removed]
        shape = [n for i, n in enumerate(site_shape) if i not in removed]

    def moved(a):
        return np.reshape(np.broadcast_to(a, site_shape), shape)

    stats = None if sig._stats is None else tuple(moved(a) for a in sig._stats)
    if sig._values is None and sig.linear is not None:   # a Gaussian kept linear stays so
        mean, coefs = sig.linear
        return Signal(sig.roots, None, tuple(new_axes), stats, linear=(moved(mean), [moved(c) for c in coefs]))
    values = np.broadcast_to(sig.values, tuple(sig.grid_shape) + site_shape).reshape(tuple(sig.grid_shape) + tuple(shape))
    return Signal(sig.roots, values, tuple(new_axes), stats, affine=sig.affine)


def reshape(node, rule, ctx):
    """Values unchanged, positions rearranged.

    Inserting or removing size-1 axes keeps every site; any other reshape that
    keeps the batch axis spells the sites out and reshapes them; a reshape that
    mixes the batch axis into others keeps only the pooled statistics.
    """
    if node.op_type == "Transpose":
        transpose(node, rule, ctx)
        return
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    if node.op_type in ("Squeeze", "Unsqueeze") and ctx.has_positions(x) == ctx.has_positions(out):
        moved = _size_one_axes(node, sig, ctx)   # with or without positions on both sides: roots keep their roles
        if moved is not None:
            ctx.set(out, moved)
            return
    dims_in, dims_out = ctx.graph.static_dims(x), ctx.graph.static_dims(out)
    if not dims_in or not dims_out or any(d is None for d in dims_in[1:] + dims_out[1:]):
        kept = _kept_prefix(ctx, sig, dims_in, dims_out, out)
        if kept is not None:
            ctx.set(out, kept)
            return
        seq_first = bool(dims_in) and dims_in[0] is not None and dims_in[0] > 1 and None in dims_in[1:2]
        ctx.set(out, _rows_and_tokens(ctx, sig, x, out, dims_in, dims_out)
                or _kept_suffix(ctx, sig, x, out, dims_in, dims_out)
                or _pooled(ctx, sig, x, out, batch_first=not seq_first))
        return
    r = len(sig.roots)
    kept_in = [a for a in range(1, len(dims_in)) if dims_in[a] != 1]
    kept_out = [a for a in range(1, len(dims_out)) if dims_out[a] != 1]
    if [dims_in[a] for a in kept_in] == [dims_out[a] for a in kept_out]:
        axes = [None] * len(dims_out)
        shape = list(sig.grid_shape) + [1] * len(dims_out)
        for a_in, a_out in zip(kept_in, kept_out):
            axes[a_out] = sig.axes[a_in]
            shape[r + a_out] = sig.values.shape[r + a_in]
        moved = Signal(sig.roots, sig.values.reshape(shape), tuple(axes))
        ctx.set(out, _channels_and_positions_swapped(moved, kept_in, kept_out, x, out, ctx))
        return
    inner_in, inner_out = int(np.prod(dims_in[1:])), int(np.prod(dims_out[1:]))
    if inner_in != inner_out or inner_in > EXPAND_LIMIT:
        ctx.set(out, _rows_and_tokens(ctx, sig, x, out, dims_in, dims_out)
                or _kept_suffix(ctx, sig, x, out, dims_in, dims_out) or _pooled(ctx, sig, x, out))
        return
    full = _expanded(sig, dims_in)
    values = full.values.reshape(tuple(sig.grid_shape) + (1,) + tuple(dims_out[1:]))
    ctx.set(out, _squeezed(Signal(sig.roots, values, (None,) + tuple(Sites.full(d) if d > 1 else None
                                                                     for d in dims_out[1:]))))


def dropout(node, rule, ctx):
    """Inverted dropout with ratio r in training mode: y = x * mask / (1 - r).

    The mask is a root of its own with nodes {0, 1/(1-r)} and weights {r, 1-r},
    independent from element to element, so E[y] = E[x] and
    E[y^2] = E[x^2] / (1 - r) come out exactly for any input.
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
    sig = ctx.signal(x)
    if not training or ratio <= 0:
        ctx.set(out, sig)
        return
    ratio = min(float(ratio), 0.999999)
    if len(sig.roots) >= MAX_ROOTS:
        sig = collapse(sig, f"{x}@{out}", ctx.has_positions(x))
    mask = Root(f"{out}#mask", "element", np.array([0.0, 1.0 / (1.0 - ratio)]), np.array([ratio, 1.0 - ratio]))
    mask_values = mask.nodes.reshape((1,) * len(sig.roots) + (2,) + (1,) * sig.rank)
    values = sig.values.reshape(sig.grid_shape + (1,) + sig.values.shape[len(sig.roots):]) * mask_values
    ctx.set(out, Signal(sig.roots + (mask,), values, sig.axes))


def _as_signal(ctx, name, rank):
    if ctx.is_signal(name):
        return ctx.signal(name)
    value = ctx.value(name)
    if value is None:
        raise Unsupported(f"input {name!r} is neither signal nor a known constant")
    return constant_signal(value.astype(np.float64), rank)


def concat(node, rule, ctx):
    """Inputs side by side along ``axis``: their sites follow one another along it."""
    out = node.output[0]
    rank = ctx.rank(out)
    if rank is None:
        raise Unsupported("unknown output rank")
    axis = int(attributes(node).get(rule.get("axis_attr", "axis"), 0)) % rank
    if axis == 0:
        raise Unsupported("concatenation along the batch axis")
    parts = []
    for name in node.input:
        if not name:
            continue
        dims = ctx.graph.static_dims(name)
        value = None if ctx.is_signal(name) else ctx.value(name)
        if value is not None and np.ndim(value) == rank:
            dims = list(np.shape(value))     # a constant (a class token expanded over the batch)
        if not dims or dims[axis] is None:
            raise Unsupported(f"input {name!r} has an unknown size along axis {axis}")
        sig = _as_signal(ctx, name, rank)
        parts.append((sig, dims[axis]))
    # spell out the concat axis of each part, then bring the other axes onto common sites
    spelled = []
    for sig, length in parts:
        want = Sites.full(length)
        r = len(sig.roots)
        values, have = sig.values, sig.axes[axis]
        if have is None:
            values = np.repeat(values, length, axis=r + axis)
        elif not have.same_as(want):
            values = np.take(values, have.index_of(want.coords), axis=r + axis)
        spelled.append(Signal(sig.roots, values, sig.axes[:axis] + (want,) + sig.axes[axis + 1:]))
    roots = union_roots(spelled)
    axes = [merge_axis([s.axes[a] for s in spelled]) for a in range(rank)]
    total = sum(s.axes[axis].size for s in spelled)
    sites = grid_size((), axes) // max(1 if axes[axis] is None else axes[axis].size, 1) * total
    if len(roots) > MAX_ROOTS or grid_size(roots, ()) * sites > GRID_BUDGET:
        # too big a grid: one fresh Gaussian over all parts, with each part's per-site statistics
        stats = []
        for s in spelled:
            own = list(axes)
            own[axis] = s.axes[axis]
            shape = [1 if a is None else a.size for a in own]
            stats.append([np.broadcast_to(v, shape) for v in with_axes(s, own).stats()])
        mean, var, shared = (np.concatenate([st[k] for st in stats], axis=axis) for k in range(3))
        axes[axis] = Sites.full(mean.shape[axis])
        ctx.set(out, gaussian(out, mean, shared, var - shared, axes, ctx.has_positions(out)))
        return
    arrays = []
    for s in spelled:
        own = list(axes)
        own[axis] = s.axes[axis]
        moved = with_axes(s, own)
        target = [len(r.nodes) for r in roots] + [1 if a is None else a.size for a in own]
        arrays.append(np.broadcast_to(on_roots(moved, roots), target))
    values = np.concatenate(arrays, axis=len(roots) + axis)
    axes[axis] = Sites.full(values.shape[len(roots) + axis])
    ctx.set(out, Signal(roots, np.ascontiguousarray(values), tuple(axes)))


def pad(node, rule, ctx):
    """Padding along each axis: sites next to the new borders hold the pad value (constant mode)
    or the mapped input sites (edge, reflect, wrap)."""
    attrs = attributes(node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    rank = sig.rank
    if len(node.input) > 1 and node.input[1]:
        pads = ctx.value(node.input[1])
        if pads is None:
            raise Unsupported("pads are not constant")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    else:
        pads = list(attrs.get("pads", [0] * 2 * rank))
    axes_input = None
    if len(node.input) > 3 and node.input[3]:
        axes_input = [int(a) % rank for a in np.asarray(ctx.value(node.input[3])).reshape(-1)]
    per_axis = {a: (0, 0) for a in range(rank)}
    targets = axes_input if axes_input is not None else list(range(rank))
    for i, a in enumerate(targets):
        per_axis[a] = (pads[i], pads[i + len(targets)])
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        v = ctx.value(node.input[2])
        value = float(np.asarray(v).reshape(-1)[0]) if v is not None and np.asarray(v).size else 0.0
    elif "value" in attrs:
        value = float(attrs["value"])
    dims = ctx.graph.static_dims(x) or [None] * rank
    r = len(sig.roots)
    values, axes = sig.values, list(sig.axes)
    for a, (pb, pe) in per_axis.items():
        if pb == 0 and pe == 0:
            continue
        if a == 0:
            raise Unsupported("padding along the batch axis")
        length = axes[a].length if axes[a] is not None else dims[a]
        if not length:
            raise Unsupported(f"unknown size along padded axis {a}")
        new_len = length + pb + pe
        sites = edge_sites(new_len, max(2, abs(pb), abs(pe)))
        src = sites.coords - pb
        inside = (src >= 0) & (src < length)
        if mode == "reflect":
            period = max(2 * (length - 1), 1)
            src = np.abs(((src % period) + period) % period)
            src = np.where(src >= length, period - src, src)
        elif mode == "wrap":
            src = src % length
        src = np.clip(src, 0, length - 1)
        index = axes[a].index_of(src) if axes[a] is not None else np.zeros_like(src)
        values = np.take(values, index, axis=r + a)
        if mode == "constant":
            shape = [1] * values.ndim
            shape[r + a] = sites.size
            values = np.where(inside.reshape(shape), values, value)
        axes[a] = sites
    ctx.set(out, Signal(sig.roots, np.ascontiguousarray(values), tuple(axes)))


def split(node, rule, ctx):
    """Split along an axis: each output takes its range of the input's sites there."""
    from ..dims import split_sizes
    x = node.input[0]
    sig = ctx.signal(x)
    axis = int(attributes(node).get("axis", 0)) % sig.rank
    sites = sig.axes[axis]
    dims = ctx.graph.static_dims(x)
    length = sites.length if sites is not None else (dims[axis] if dims else None)
    sizes = split_sizes(node, ctx, length)
    if sizes is None or len(sizes) != len(node.output):
        raise Unsupported("unknown split sizes")
    r = len(sig.roots)
    start = 0
    for name, size in zip(node.output, sizes):
        if name:
            if sites is None:
                ctx.set(name, sig)
            else:
                index = sites.index_of(np.arange(start, start + size))
                axes = list(sig.axes)
                axes[axis] = Sites.full(size) if size > 1 else None
                values = np.take(sig.values, index if size > 1 else index[:1], axis=r + axis)
                ctx.set(name, Signal(sig.roots, values, tuple(axes)))
        start += size


def _runs(picked: np.ndarray, length: int) -> tuple:
    """(Sites, input class per site) for a sliced axis: consecutive kept positions that read the
    same input class stay one class."""
    change = np.flatnonzero(np.diff(picked)) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [len(picked)]]))
    return Sites(starts, counts, length), picked[starts]


def slice_positions(node, rule, ctx):
    """Slice with constant starts, ends, axes and steps: the sites the kept positions belong to.

    An axis without sites (every position alike) keeps its statistics whatever is cut."""
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    attrs = attributes(node)
    if len(node.input) > 1:       # opset 10+: starts, ends, axes, steps as inputs
        names = (list(node.input[1:]) + [""] * 4)[:4]
        starts, ends, axes, steps = (ctx.value(n) if n else None for n in names)
        if starts is None or ends is None or any(n and ctx.value(n) is None for n in names):
            raise Unsupported("slice bounds are not constant")
    else:
        starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
    starts = np.asarray(starts, np.int64).reshape(-1)
    ends = np.asarray(ends, np.int64).reshape(-1)
    axes = np.arange(len(starts)) if axes is None else np.asarray(axes, np.int64).reshape(-1)
    steps = np.ones(len(starts), np.int64) if steps is None else np.asarray(steps, np.int64).reshape(-1)
    r = len(sig.roots)
    values, out_axes = sig.values, list(sig.axes)
    big = np.iinfo(np.int64).max // 2     # INT64_MAX-style "to the end" bounds, kept within Python ints
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % sig.rank
        sites = sig.axes[axis]
        if sites is None:
            continue
        if step == 0:
            raise Unsupported("slice step 0")
        kept = np.arange(sites.length)[slice(int(np.clip(start, -big, big)), int(np.clip(end, -big, big)), int(step))]
        if kept.size == 0:
            raise Unsupported("empty slice")
        out_axes[axis], classes = _runs(sites.index_of(kept), kept.size)
        values = np.take(values, classes, axis=r + axis)
    ctx.set(out, _squeezed(Signal(sig.roots, np.ascontiguousarray(values), tuple(out_axes))))
