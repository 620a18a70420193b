"""Pooling over the positions of one (sample, channel), windowed or global.

Given the sample roots, the positions of a window are independent draws of
the element roots, so for a window of n values (zero-padded taps excluded
unless count_include_pad):
    average:  mean = sum m / n,  within = sum nu_e / n^2,  shared = (sum sqrt(nu_s))^2 / n^2
    maximum:  CDF of the max of n i.i.d. draws is F^n, evaluated on equal-mass
              nodes interpolated from the element root's quadrature values; where a
              window's taps read sites with different laws (next to a border, on a small
              map), the product of their CDFs on atoms of each law (mixed_max_stats).
Global pooling leaves no positions: its output's variance is all shared.
"""
from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist

import numpy as np

from ..signal import SITE_BUDGET, Signal, collapse, gaussian, interpolation
from ..windows import window
from .common import attributes

SORT_NODES = 1024   # equal-mass nodes for the order statistics of a non-monotone function
MAX_NODES = 128     # nodes in the quantile space of the maximum
ATOMS = 32          # atoms per tap's law for the max of taps with different laws (and 16, to extrapolate)
CROWDING = 0.5      # atoms equal-mass for the max of taps ** CROWDING alike draws: crowded toward the top
CHUNK = 1 << 20     # atoms (columns x taps x atoms per tap) sorted at once


@lru_cache(maxsize=None)
def _equal_mass(n: int) -> np.ndarray:
    nd = NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / n) for i in range(n)])


@lru_cache(maxsize=None)
def _max_nodes(k: float, n: int = MAX_NODES) -> np.ndarray:
    """z at the quantiles of the max of k i.i.d. standard normals: Phi^-1(v^(1/k)), v equal-mass."""
    nd = NormalDist()
    v = (np.arange(n) + 0.5) / n
    return np.array([nd.inv_cdf(min(u, 1 - 1e-16)) for u in v ** (1.0 / k)])


def max_stats(sig: Signal, flat_sites: np.ndarray, counts: np.ndarray, name: str, positions: bool):
    """(mean, var, shared) of the max of counts[o] i.i.d. draws at site flat_sites[o].

    Given the sample roots, a site's value is a function g of its element root Z.
    When g is monotone the max of k draws is g(Z_max) with Z_max = Phi^-1(V^(1/k)),
    V uniform: equal-weight nodes in V give the moments. Otherwise the values are
    sorted on fine equal-mass nodes and weighted by F^k - F_prev^k.
    """
    element = [i for i, r in enumerate(sig.roots) if r.kind == "element"]
    if not element:
        mean, var, shared = (a.reshape(-1)[flat_sites] for a in sig.stats())
        return mean, var, shared
    if len(element) > 1:
        sig = collapse(sig, name, positions)
        element = [i for i, r in enumerate(sig.roots) if r.kind == "element"]
    e = element[0]
    sample = [i for i in range(len(sig.roots)) if i != e]
    r = len(sig.roots)
    z = sig.roots[e].nodes
    v = np.moveaxis(sig.values, sample + [e], list(range(r)))
    n_s = int(np.prod([len(sig.roots[i].nodes) for i in sample])) if sample else 1
    v = v.reshape(n_s, len(z), -1)[:, :, flat_sites]
    w_s = np.ones(1)
    for i in sample:
        w_s = np.multiply.outer(w_s, sig.roots[i].weights)
    w_s = w_s.reshape(-1)
    steps = np.diff(v, axis=1)
    tol = 1e-12 * (np.abs(v).max() + 1.0)
    m1 = np.empty((n_s, v.shape[2]))
    m2 = np.empty_like(m1)
    if np.all(steps >= -tol) or np.all(steps <= tol):
        sign = 1.0 if np.all(steps >= -tol) else -1.0
        for k in np.unique(counts):
            cols = counts == k
            at = np.einsum("jk,sko->sjo", interpolation(z, sign * _max_nodes(float(k))), v[:, :, cols])
            m1[:, cols] = at.mean(axis=1)
            m2[:, cols] = (at * at).mean(axis=1)
    else:
        ordered = np.sort(np.einsum("jk,sko->sjo", interpolation(z, _equal_mass(SORT_NODES)), v), axis=1)
        cdf = np.arange(1, SORT_NODES + 1)[:, None] / SORT_NODES
        p = cdf ** counts[None, :] - (cdf - 1.0 / SORT_NODES) ** counts[None, :]
        m1 = np.einsum("jo,sjo->so", p, ordered)
        m2 = np.einsum("jo,sjo->so", p, ordered ** 2)
    mean = w_s @ m1
    var = np.maximum(w_s @ m2 - mean ** 2, 0.0)
    shared = np.clip(w_s @ m1 ** 2 - mean ** 2, 0.0, var)
    return mean, var, shared


def _element_grid(sig: Signal, name: str, positions: bool):
    """(values (sample nodes, element nodes, sites), element nodes, sample weights): the signal
    as a function of its one element root, per sample node (several element roots collapsed)."""
    element = [i for i, r in enumerate(sig.roots) if r.kind == "element"]
    if len(element) > 1:
        sig = collapse(sig, name, positions)
        element = [i for i, r in enumerate(sig.roots) if r.kind == "element"]
    sample = [i for i in range(len(sig.roots)) if i not in element]
    n_s = int(np.prod([len(sig.roots[i].nodes) for i in sample])) if sample else 1
    w_s = np.ones(1)
    for i in sample:
        w_s = np.multiply.outer(w_s, sig.roots[i].weights)
    r = len(sig.roots)
    if not element:
        return sig.values.reshape(n_s, 1, -1), None, w_s.reshape(-1)
    z = sig.roots[element[0]].nodes
    v = np.moveaxis(sig.values, sample + element, list(range(r)))
    return v.reshape(n_s, len(z), -1), z, w_s.reshape(-1)


@lru_cache(maxsize=None)
def _tail_levels(q: int, taps: int):
    """Cell boundaries b_k = (k/q)^(1/taps) and atom levels ((k + 1/2)/q)^(1/taps) in a tap's
    quantile space: equal mass for the max of ``taps`` alike draws, so atoms crowd the upper tail
    where the max lives; and the atoms' normal scores Phi^-1(level)."""
    power = 1.0 / taps ** CROWDING
    bounds = (np.arange(q + 1) / q) ** power
    levels = ((np.arange(q) + 0.5) / q) ** power
    nd = NormalDist()
    return bounds, np.array([nd.inv_cdf(min(u, 1 - 1e-16)) for u in levels])


def _atoms(v: np.ndarray, z, q: int, taps: int):
    """Each site's law on q atoms: (atoms (sample nodes, q, sites), cell bounds (q + 1,)).

    Atom k sits at quantile level u_k of g(Z), its cell covering [b_k, b_k+1) of the mass,
    crowded towards the top where the max lives (_tail_levels) when g is monotone, equal-mass
    and sorted otherwise. Without an element root each site is one atom."""
    if z is None:
        return v, np.array([0.0, 1.0])
    steps = np.diff(v, axis=1)
    tol = 1e-12 * (np.abs(v).max() + 1.0)
    rising, falling = bool(np.all(steps >= -tol)), bool(np.all(steps <= tol))
    if rising or falling:
        bounds, scores = _tail_levels(q, taps)
        return np.einsum("jk,sko->sjo", interpolation(z, scores if rising else -scores), v), bounds
    atoms = np.sort(np.einsum("jk,sko->sjo", interpolation(z, _equal_mass(q)), v), axis=1)
    return atoms, np.arange(q + 1) / q


def _max_moments(atoms, bounds, tap_sites, valid):
    """E[max], E[max^2] per (sample node, column): P(max <= y) = prod_t b(#{k : q_t[k] <= y})."""
    n_s, q = atoms.shape[:2]
    taps, cols = tap_sites.shape
    with np.errstate(divide="ignore"):
        step_table = np.log(bounds[1:]) - np.concatenate([[0.0], np.log(bounds[1:-1])])   # log b_k+1 / b_k
    m1, m2 = np.empty((n_s, cols)), np.empty((n_s, cols))
    step = max(1, CHUNK // (n_s * taps * q))
    for start in range(0, cols, step):
        part = slice(start, min(start + step, cols))
        a = atoms[:, :, np.clip(tap_sites[:, part], 0, None)]                  # (s, q, T, k)
        a = np.where(valid[None, None, :, part], a, -np.inf)
        a = a.transpose(0, 3, 2, 1).reshape(n_s, -1, taps * q)                  # tap t: atoms t*q ...
        order = np.argsort(a, axis=-1)
        y = np.take_along_axis(a, order, axis=-1)
        # the j-th atom in order is its tap's (k+1)-th: that tap's CDF goes from b_k to b_k+1
        k = order % q
        first = (k == 0).astype(np.int16)
        missing = taps - np.cumsum(first, axis=-1, dtype=np.int16)   # taps with no atom below y yet
        cdf = np.exp(np.cumsum(step_table[k], axis=-1))
        cdf[missing > 0] = 0.0
        mass = np.diff(cdf, axis=-1, prepend=0.0)
        y[mass <= 0] = 0.0
        my = mass * y
        m1[:, part] = np.sum(my, axis=-1)
        m2[:, part] = np.einsum("...j,...j->...", my, y)
    return m1, m2


def mixed_max_stats(sig: Signal, tap_sites: np.ndarray, valid: np.ndarray, name: str, positions: bool):
    """(mean, var, shared) per column of the max over taps whose laws differ.

    tap_sites (T, cols): flat site index each tap reads, valid (T, cols): inside the input.
    Given the sample roots, tap t is g_t(Z_t) with independent Z_t. On q atoms per law (_atoms),
        P(max <= y) = prod_t b(#{k : q_t[k] <= y}),
    a step function whose jumps at the atoms give the moments; a tap outside the input (max
    pooling pads with -inf) never wins. Atoms lose each cell's spread, an error about
    proportional to 1/q, so the moments are extrapolated from q and q/2 atoms:
        M = 2 M(q) - M(q/2)."""
    v, z, w_s = _element_grid(sig, name, positions)
    taps = tap_sites.shape[0]
    m1, m2 = _max_moments(*_atoms(v, z, ATOMS, taps), tap_sites, valid)
    if z is not None:
        h1, h2 = _max_moments(*_atoms(v, z, ATOMS // 2, taps), tap_sites, valid)
        m1, m2 = 2 * m1 - h1, 2 * m2 - h2
    mean = w_s @ m1
    var = np.maximum(w_s @ m2 - mean ** 2, 0.0)
    shared = np.clip(w_s @ m1 ** 2 - mean ** 2, 0.0, var)
    return mean, var, shared


def _global(node, rule, ctx, sig, out):
    mean, var, shared = sig.stats()
    spatial = tuple(range(2, sig.rank))
    dims = ctx.graph.static_dims(node.input[0])
    lengths = [s.length if s is not None else (dims[a] if dims and dims[a] else None)
               for a, s in zip(spatial, sig.axes[2:])]
    n = int(np.prod(lengths)) if all(lengths) else 1 << 16
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    w = w / w.sum(axis=spatial, keepdims=True)
    axes = (None, sig.axes[1]) + (None,) * len(spatial)
    if rule.get("reduce") == "max":
        # the interior class (the heaviest site) stands for the whole map
        flat_shape = mean.shape
        heaviest = np.unravel_index(np.argmax(w[0, 0]), w.shape[2:])
        channels = mean.shape[1]
        flat = np.ravel_multi_index((np.zeros(channels, int), np.arange(channels)) +
                                    tuple(np.full(channels, h) for h in heaviest), flat_shape)
        m, v, s = max_stats(sig, flat, np.full(channels, n), f"{node.input[0]}@{out}", True)
        shape = (1, channels) + (1,) * len(spatial)
        ctx.set(out, gaussian(out, m.reshape(shape), v.reshape(shape), 0.0, axes, False))
        return
    m = (w * mean).sum(axis=spatial, keepdims=True)
    s = (w * np.sqrt(shared)).sum(axis=spatial, keepdims=True) ** 2
    e = (w * (var - shared)).sum(axis=spatial, keepdims=True) / n
    ctx.set(out, gaussian(out, m, s + e, 0.0, axes, False))


def pool(node, rule, ctx):
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    if sig.rank < 3:
        ctx.set(out, sig)
        return
    if rule.get("global"):
        _global(node, rule, ctx, sig, out)
        return
    attrs = attributes(node)
    kernel = list(attrs.get("kernel_shape", [1] * (sig.rank - 2)))
    dims = ctx.graph.static_dims(x) or [None] * sig.rank
    lengths = [s.length if s is not None else d for s, d in zip(sig.axes[2:], dims[2:])]
    channels = sig.values.shape[len(sig.roots) + 1]
    win = window(attrs, kernel, list(sig.axes[2:]), lengths, ceil_mode=bool(attrs.get("ceil_mode", 0)),
                 max_sites=SITE_BUDGET // max(channels, 1))
    mean, var, shared = sig.stats()
    taps = int(np.prod(kernel))
    out_shape = tuple(1 if s is None else s.size for s in win.out_sites)
    valid = np.broadcast_to(win.valid_mask(), tuple(kernel) + out_shape).reshape(taps, -1)
    n_valid = valid.sum(axis=0)
    axes = (None, sig.axes[1]) + tuple(win.out_sites)
    channels = mean.shape[1]
    positions = ctx.has_positions(out)
    if rule.get("reduce") == "max":
        spatial_index = np.arange(int(np.prod(mean.shape[2:]))).reshape(mean.shape[2:])
        gathered = win.gather(spatial_index[None].astype(np.float64), fill=-1.0)[0].reshape(taps, -1).astype(int)
        first = gathered.max(axis=0)                        # the site of some valid tap
        alike = np.all(~valid | (gathered == first), axis=0)
        m, v, s = (np.empty((channels, first.size)) for _ in range(3))
        base = np.arange(channels)[:, None] * spatial_index.size
        if alike.any():
            flat = (base + first[None, alike]).reshape(-1)
            counts = np.tile(n_valid[alike], channels).astype(np.float64)
            stats = max_stats(sig, flat, counts, f"{x}@{out}", positions)
            for array, value in zip((m, v, s), stats):
                array[:, alike] = value.reshape(channels, -1)
        if not alike.all():
            # the max depends on the multiset of sites a window reads, not on their order: windows
            # reading the same sites (taps outside the input as -1, which never win) share one result
            read = np.sort(np.where(valid[:, ~alike], gathered[:, ~alike], -1), axis=0)
            kinds, which = np.unique(read, axis=1, return_inverse=True)
            cols = (base[:, None, :] + np.maximum(kinds, 0)[None]).transpose(1, 0, 2).reshape(taps, -1)
            tap_valid = np.broadcast_to((kinds >= 0)[:, None], (taps, channels, kinds.shape[1])).reshape(taps, -1)
            stats = mixed_max_stats(sig, cols, tap_valid, f"{x}@{out}", positions)
            for array, value in zip((m, v, s), stats):
                array[:, ~alike] = value.reshape(channels, -1)[:, which.reshape(-1)]
        shape = (1, channels) + out_shape
        ctx.set(out, gaussian(out, m.reshape(shape), s.reshape(shape), (v - s).reshape(shape), axes, positions))
        return
    include_pad = bool(attrs.get("count_include_pad", 0))
    n = np.full(n_valid.shape, float(taps)) if include_pad else np.maximum(n_valid, 1).astype(np.float64)

    def window_sum(a):
        g = win.gather(a[0]).reshape(channels, taps, -1)
        return g.sum(axis=1)

    m = window_sum(mean) / n
    e = window_sum(var - shared) / n ** 2
    s = (window_sum(np.sqrt(shared)) / n) ** 2
    shape = (1, channels) + out_shape
    ctx.set(out, gaussian(out, m.reshape(shape), s.reshape(shape), e.reshape(shape), axes, positions))


def _channels_last_mean(node, rule, ctx, sig, reduced, kept, keepdims):
    """ReduceMean / ReduceSum over every axis but the batch and one kept (channel) axis, anywhere:
    token pooling (B, L, C) over L, a channels-last map (B, H, W, C) over H and W.

    As for global pooling, with w the site weights normalized over the n reduced elements:
        mean = sum w m,  shared = (sum w sqrt(nu_s))^2,  within = sum w nu_e / n
    (the sample root is common to all reduced elements, the element root independent)."""
    from .common import Unsupported
    mean, var, shared = sig.stats()
    dims = ctx.graph.static_dims(node.input[0])
    lengths = [sig.axes[a].length if sig.axes[a] is not None else (dims[a] if dims and dims[a] else None)
               for a in reduced]
    if not all(lengths):
        raise Unsupported("unknown number of positions to reduce")
    n = float(np.prod(lengths))
    red = tuple(reduced)
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    w = w / w.sum(axis=red, keepdims=True)
    m = (w * mean).sum(axis=red, keepdims=True)
    s = (w * np.sqrt(shared)).sum(axis=red, keepdims=True) ** 2
    e = (w * (var - shared)).sum(axis=red, keepdims=True) / n
    scale = n if rule.get("sum") else 1.0
    m, v = m * scale, (s + e) * scale ** 2
    axes = [None if a in reduced else sig.axes[a] for a in range(sig.rank)]
    if not keepdims:
        m, v = m.reshape([m.shape[a] for a in (0, kept)]), v.reshape([v.shape[a] for a in (0, kept)])
        axes = [None, axes[kept]]
    ctx.set(node.output[0], gaussian(node.output[0], m, v, 0.0, axes, False))


def _channel_sum(node, rule, ctx, sig, keepdims: bool):
    """ReduceSum / ReduceMean over axis 1 alone of a tensor with axes after the channels (ResNeSt
    sums its splits, laid out as (N, radix, C, H, W)), its entries independent as channels are
    to every rule (tokens (N, T, D) averaged over T go to _channels_last_mean instead):
        sum: mean = sum_i m_i, shared = sum_i s_i, within = sum_i w_i;  mean: / n and / n^2."""
    from .common import Unsupported
    out = node.output[0]
    n = sig.axes[1].length if sig.axes[1] is not None else (ctx.graph.static_dims(node.input[0]) or [None] * 2)[1]
    if not n:
        raise Unsupported("unknown number of entries to reduce")
    mean, var, shared = (np.asarray(a, np.float64) for a in sig.stats())
    if sig.axes[1] is not None and sig.axes[1].size != n:
        index = sig.axes[1].index_of(np.arange(n))
        mean, var, shared = (np.take(a, index, axis=1) for a in (mean, var, shared))
    count = n if mean.shape[1] == 1 else 1    # an alike axis stands for n equal entries
    totals = [count * a.sum(axis=1, keepdims=True) for a in (mean, shared, var - shared)]
    if not rule.get("sum"):
        totals = [totals[0] / n, totals[1] / n ** 2, totals[2] / n ** 2]
    axes = list(sig.axes)
    axes[1] = None
    if not keepdims:
        totals = [np.squeeze(a, axis=1) for a in totals]
        del axes[1]
    ctx.set(out, gaussian(out, *totals, axes, ctx.has_positions(out)))


def reduced_axes(node, ctx):
    """A Reduce op's axes: the attribute (up to opset 17) or the constant second input; None
    where neither is given or known."""
    axes = attributes(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = ctx.value(node.input[1])
        axes = None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return axes


def reduce_positions(node, rule, ctx):
    """ReduceMean / ReduceSum / ReduceMax over all position axes (2, 3, ...): global pooling by another name.

    ``keepdims=0`` drops the reduced axes. A mean or sum over all axes but the batch and
    one other (channels last) goes to ``_channels_last_mean``; any other set of axes is
    left to the Monte Carlo fallback.
    """
    from .common import Unsupported
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    attrs = attributes(node)
    axes = reduced_axes(node, ctx)
    if axes is None or sig.rank < 3:
        raise Unsupported("reduction over other axes than all positions")
    reduced = sorted({a % sig.rank for a in axes})
    if reduced == [1] and sig.rank >= 4 and rule.get("reduce") != "max":
        return _channel_sum(node, rule, ctx, sig, bool(attrs.get("keepdims", 1)))
    if reduced != list(range(2, sig.rank)):
        kept = [a for a in range(1, sig.rank) if a not in reduced]
        if 0 in reduced or len(kept) != 1 or rule.get("reduce") == "max":
            raise Unsupported("reduction over other axes than all positions")
        return _channels_last_mean(node, rule, ctx, sig, reduced, kept[0], bool(attrs.get("keepdims", 1)))
    _global(node, {"reduce": rule.get("reduce")}, ctx, sig, out)
    pooled = ctx.signal(out)
    if rule.get("sum"):
        dims = ctx.graph.static_dims(x)
        n = float(np.prod([d for d in dims[2:]])) if dims and all(dims[2:]) else None
        if n is None:
            raise Unsupported("unknown number of positions to sum")
        from ..signal import Signal
        pooled = Signal(pooled.roots, pooled.values * n, pooled.axes)
    if not attrs.get("keepdims", 1):
        from ..signal import Signal
        r = len(pooled.roots)
        values = pooled.values.reshape(pooled.values.shape[:r + 2])
        pooled = Signal(pooled.roots, values, pooled.axes[:2])
    ctx.set(out, pooled)


def reduce_norm(node, rule, ctx):
    """ReduceSumSquare (S = sum_j x_j^2) and ReduceL2 (sqrt S) over any axes but the batch.

    With x_j = m_j + s_j + e_j over the n reduced elements (site weights w_j summing to n;
    s the part common to a sample's positions, e independent from element to element):
        E[S] = sum_j w_j (m_j^2 + nu_j),
        Var S = sum_j w_j (2 nu_e,j^2 + 4 (m_j^2 + nu_s,j) nu_e,j)      (within: element to element)
              + 4 (sum_j w_j m_j sqrt(nu_s,j))^2 + 2 (sum_j w_j nu_s,j)^2  (shared: one s per sample),
    and sqrt S by the delta method (S is a sum of many terms: F.normalize over 196 tokens in
    XCiT): mean sqrt(E[S]) - Var S / (8 E[S]^1.5), variance Var S / (4 E[S]). Where the input
    has sample roots (a part common to its positions), S is instead their function
    (``_norm_given_samples``). Unknown lengths go to the fallback."""
    from .common import Unsupported
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    attrs = attributes(node)
    axes = reduced_axes(node, ctx)
    if not axes:
        raise Unsupported("axes not known, or every axis (the batch included)")
    reduced = sorted({a % sig.rank for a in axes})
    if 0 in reduced:
        raise Unsupported("reduction over the batch axis")
    dims = ctx.graph.static_dims(x)
    lengths = [sig.axes[a].length if sig.axes[a] is not None else (dims[a] if dims and dims[a] else None)
               for a in reduced]
    if not all(lengths):
        raise Unsupported("unknown number of elements to reduce")
    n = float(np.prod(lengths))
    mean, var, shared = (np.asarray(a, np.float64) for a in sig.stats())
    within = np.maximum(var - shared, 0.0)
    red = tuple(reduced)
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    w = w / w.sum(axis=red, keepdims=True) * n
    total = (w * (mean ** 2 + var)).sum(axis=red, keepdims=True)
    var_within = (w * (2 * within ** 2 + 4 * (mean ** 2 + shared) * within)).sum(axis=red, keepdims=True)
    var_shared = 4 * (w * mean * np.sqrt(shared)).sum(axis=red, keepdims=True) ** 2 \
        + 2 * (w * shared).sum(axis=red, keepdims=True) ** 2
    if rule.get("root", False):
        safe = np.maximum(total, 1e-300)
        root = np.sqrt(total) - (var_within + var_shared) / (8 * safe * np.sqrt(safe))   # E[sqrt S], 2nd order
        total, var_within, var_shared = np.maximum(root, 0.0), var_within / (4 * safe), var_shared / (4 * safe)
    axes_out = [None if a in reduced else sig.axes[a] for a in range(sig.rank)]
    if not int(attrs.get("keepdims", 1)):
        kept = [a for a in range(sig.rank) if a not in reduced]
        shape = [total.shape[a] for a in kept]
        total, var_within, var_shared = (a.reshape(shape) for a in (total, var_within, var_shared))
        axes_out = [axes_out[a] for a in kept]
    positions = ctx.has_positions(out)
    given = _norm_given_samples(sig, red, w, bool(rule.get("root", False)), total.shape)
    if given is not None:   # a function of the input's own sample roots: x / ||x|| stays exact
        ctx.set(out, Signal(given[0], given[1], axes_out))
        return
    ctx.set(out, gaussian(out, total, var_shared if positions else var_shared + var_within,
                          var_within if positions else 0.0, axes_out, positions))


def _norm_given_samples(sig, red, w, root: bool, shape):
    """(roots, values) of S (or sqrt S) as a function of the input's sample roots, the
    element-to-element part averaged out (many reduced elements):
        E[S | z] = sum_j w_j E[x_j^2 | z],
    so a later x / ||x|| (F.normalize) sees the part the norm shares with x (per-channel
    offsets carried as a sample root make the norm vary with them)."""
    picked = [i for i, r in enumerate(sig.roots) if r.kind == "sample"]
    if not picked or len(picked) > 2:
        return None
    values = sig.values
    r = len(sig.roots)
    squares = values * values
    for i in sorted((i for i in range(r) if i not in picked), reverse=True):
        weights = sig.roots[i].weights.reshape([-1 if m == i else 1 for m in range(squares.ndim)])
        squares = (squares * weights).sum(axis=i)
    k = len(picked)
    total = (w.reshape((1,) * k + w.shape) * squares).sum(axis=tuple(k + a for a in red), keepdims=True)
    if root:
        total = np.sqrt(total)
    return tuple(sig.roots[i] for i in picked), total.reshape(total.shape[:k] + tuple(shape))
