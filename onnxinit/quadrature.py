"""Expectations of functions of independent Gaussian roots.

An :class:`Expr` is a tensor written as ``fn(roots)``, each root a Gaussian
``N(mean, shared + within)`` independent of the others. Elementwise chains
(x*Sigmoid(x), x*0.5*(1+Erf(x/sqrt 2))) become one ``fn`` over one root, so
their moments come out exact instead of treating x and f(x) as independent.

Moments are Gauss-Hermite quadrature over a tensor grid of the roots:
    E[f(X)] = sum_k w_k f(mu + sqrt(nu) z_k),  (z_k, w_k) probabilists' GH nodes.
The split of the output variance into ``shared``/``within`` uses a second
grid with one axis per part of each root. Order statistics (max-pool) use
equal-mass quantile nodes on the ``within`` axes instead of GH nodes, whose
discrete distribution is too coarse in the tails for a maximum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Callable, Mapping

import numpy as np

from .moments import Moments

MAX_GH_NODES = 256          # numpy's hermegauss overflows beyond ~300 nodes
GRID_BUDGET = 1 << 21       # grid points x broadcast elements per evaluation
MIN_NODES = 8


@dataclass(frozen=True)
class Root:
    name: str
    mean: float
    shared: float
    within: float

    @classmethod
    def of(cls, name: str, m: Moments) -> "Root":
        return cls(name, m.mean, m.shared, m.within)


@dataclass(frozen=True)
class Expr:
    """A tensor as ``fn({root name: values})``; values have shape (P, 1, ..., 1)."""

    roots: tuple
    fn: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    rank: int
    depth: int = 0

    @classmethod
    def leaf(cls, name: str, m: Moments, rank: int) -> "Expr":
        return cls((Root.of(name, m),), lambda values: values[name], max(rank, 1))


@lru_cache(maxsize=None)
def gauss_hermite(n: int):
    """Nodes and normalized weights for E[f(Z)], Z ~ N(0, 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


@lru_cache(maxsize=None)
def equal_mass(n: int):
    """Midpoints of n equal-probability bins of N(0, 1), rescaled to unit variance."""
    nd = NormalDist()
    z = np.array([nd.inv_cdf((i + 0.5) / n) for i in range(n)])
    z /= math.sqrt(np.mean(z * z))
    return z, np.full(n, 1.0 / n)


def _nodes_per_axis(n_axes: int, broadcast_size: int, cap: int) -> int:
    if n_axes == 0:
        return 1
    k = int((GRID_BUDGET / max(broadcast_size, 1)) ** (1.0 / n_axes))
    return max(MIN_NODES, min(cap, k))


def _mesh(axes):
    """Flatten a tensor grid: axes = [(root name, scale, nodes, weights)] -> values, weights."""
    sizes = [len(a[2]) for a in axes]
    total = int(np.prod(sizes)) if sizes else 1
    weights = np.ones(total)
    offsets = {}
    for i, (name, scale, z, w) in enumerate(axes):
        shape = [1] * len(axes)
        shape[i] = len(z)
        grid_z = np.broadcast_to((scale * z).reshape(shape), sizes).reshape(total)
        grid_w = np.broadcast_to(w.reshape(shape), sizes).reshape(total)
        offsets[name] = offsets.get(name, 0.0) + grid_z
        weights = weights * grid_w
    return offsets, weights, sizes


def _root_values(expr: Expr, offsets, total):
    lead = (total,) + (1,) * (expr.rank - 1)
    return {r.name: (r.mean + offsets.get(r.name, np.zeros(total))).reshape(lead) for r in expr.roots}


def _evaluate(expr: Expr, values, total) -> np.ndarray:
    out = np.asarray(expr.fn(values), dtype=np.float64)
    if out.ndim == 0 or out.shape[0] != total:
        out = np.broadcast_to(out, (total,) + out.shape[1:] if out.ndim else (total,))
    return out.reshape(total, -1)


def _broadcast_size(expr: Expr) -> int:
    probe = {r.name: np.full((1,) + (1,) * (expr.rank - 1), r.mean) for r in expr.roots}
    return int(np.asarray(expr.fn(probe)).size)


def element_stats(expr: Expr):
    """Per broadcast element b: (mean_b, var_b, shared_b) over the roots, shaped like the broadcast.

    A tensor with per-channel constants has one entry per channel; pooled
    statistics follow as mean = avg mean_b, var = avg var_b + var(mean_b).
    """
    probe = np.asarray(expr.fn({r.name: np.full((1,) + (1,) * (expr.rank - 1), r.mean) for r in expr.roots}))
    bshape = probe.shape[1:] if probe.ndim else ()
    bsize = int(np.prod(bshape, dtype=np.int64))
    live = [r for r in expr.roots if r.shared + r.within > 0]
    k = _nodes_per_axis(len(live), bsize, MAX_GH_NODES if len(live) == 1 else 128)
    z, w = gauss_hermite(k)
    offsets, weights, _ = _mesh([(r.name, math.sqrt(r.shared + r.within), z, w) for r in live])
    total = len(weights)
    v = _evaluate(expr, _root_values(expr, offsets, total), total)
    mean_b = weights @ v
    var_b = weights @ (v * v) - mean_b ** 2
    if all(r.within == 0 for r in live):
        shared_b = var_b
    elif all(r.shared == 0 for r in live):
        shared_b = np.zeros_like(var_b)
    else:
        shared_b = _shared_part(expr, live, bsize, mean_b)
    var_b = np.maximum(var_b, 0.0)
    shared_b = np.clip(shared_b, 0.0, var_b)
    return mean_b.reshape(bshape), var_b.reshape(bshape), shared_b.reshape(bshape)


def pool_stats(mean_b, var_b, shared_b) -> Moments:
    """Pooled moments over broadcast elements: spread of the element means counts as shared."""
    mean = float(np.mean(mean_b))
    spread = float(np.mean(np.square(mean_b))) - mean * mean
    return Moments(mean, float(np.mean(var_b)) + spread, float(np.mean(shared_b)) + spread).clamped()


def moments(expr: Expr) -> Moments:
    """Mean, variance and shared variance of ``expr`` over its roots and broadcast elements."""
    return pool_stats(*element_stats(expr))


def channel_stats(expr: Expr, axis: int, channels: int):
    """(mean_c, shared_c, within_c) for each of ``channels`` along tensor ``axis``, or None.

    Broadcast axes other than ``axis`` are pooled; an expression constant along
    ``axis`` gives the same statistics for every channel.
    """
    return to_channels(*element_stats(expr), expr.rank, axis, channels)


def to_channels(mean_b, var_b, shared_b, rank: int, axis: int, channels: int):
    """Pool per-element statistics down to per-channel ones along ``axis`` (None if they don't fit)."""
    axis = axis % rank
    if axis == 0 or mean_b.ndim != rank - 1 or mean_b.shape[axis - 1] not in (1, channels):
        return None
    others = tuple(i for i in range(mean_b.ndim) if i != axis - 1)
    m = mean_b.mean(axis=others)
    second = (var_b + mean_b ** 2).mean(axis=others)
    shared = (shared_b + mean_b ** 2).mean(axis=others) - m ** 2
    m, second, shared = (np.broadcast_to(np.reshape(a, -1), (channels,)).astype(np.float64)
                         for a in (m, second, shared))
    var = np.maximum(second - m ** 2, 0.0)
    shared = np.clip(shared, 0.0, var)
    return m, shared, var - shared


def channelwise(name: str, mean_c, var_c, shared_fraction: float, rank: int, axis: int) -> Expr:
    """x_c = mean_c + sqrt(var_c) * z, z one root whose variance splits shared/within by the fraction."""
    rank = max(rank, 2)
    axis = axis % rank
    shape = (-1,) + (1,) * (rank - 1 - axis)
    mean_c = np.asarray(mean_c, np.float64).reshape(shape)
    std_c = np.sqrt(np.maximum(np.asarray(var_c, np.float64), 0.0)).reshape(shape)
    rho = min(max(shared_fraction, 0.0), 1.0)
    root = Root(name, 0.0, rho, 1.0 - rho)
    return Expr((root,), lambda values: mean_c + std_c * values[name], rank)


def _split_axes(live, bsize, within_nodes=None):
    """Grid axes with one axis per nonzero part: shared axes first, then within axes."""
    n_axes = sum((r.shared > 0) + (r.within > 0) for r in live)
    k = _nodes_per_axis(n_axes, bsize, 96)
    zs, ws = gauss_hermite(k)
    shared_axes = [(r.name, math.sqrt(r.shared), zs, ws) for r in live if r.shared > 0]
    if within_nodes is None:
        within_nodes = (zs, ws)
    within_axes = [(r.name, math.sqrt(r.within), *within_nodes) for r in live if r.within > 0]
    return shared_axes, within_axes


def _shared_part(expr, live, bsize, mean_b):
    """Per broadcast element: variance over the shared parts of E over the within parts."""
    shared_axes, within_axes = _split_axes(live, bsize)
    offsets, weights, sizes = _mesh(shared_axes + within_axes)
    n_s = int(np.prod([len(a[2]) for a in shared_axes])) if shared_axes else 1
    total = len(weights)
    v = _evaluate(expr, _root_values(expr, offsets, total), total).reshape(n_s, total // n_s, -1)
    w = weights.reshape(n_s, total // n_s)
    w_s = w.sum(axis=1)
    conditional = np.einsum("se,seb->sb", w / w_s[:, None], v)
    return w_s @ conditional ** 2 - mean_b ** 2


def max_of_window(expr: Expr, window: int):
    """Per broadcast element (mean_b, var_b, shared_b) of the max of ``window`` positions.

    Given the shared parts, positions are i.i.d. draws of the within parts, so
    the max has CDF F^k; with n equal-mass nodes, sorted value i has weight
    ((i+1)/n)^k - (i/n)^k. ``shared_b`` is the variance over the shared parts.
    """
    live = [r for r in expr.roots if r.shared + r.within > 0]
    bsize = _broadcast_size(expr)
    n_within = sum(r.within > 0 for r in live)
    per_axis = {0: 1, 1: 1024, 2: 64}.get(n_within, 16)
    shared_axes, within_axes = _split_axes(live, bsize, equal_mass(per_axis))
    offsets, weights, sizes = _mesh(shared_axes + within_axes)
    n_s = int(np.prod([len(a[2]) for a in shared_axes])) if shared_axes else 1
    total = len(weights)
    n_e = total // n_s
    raw = _evaluate(expr, _root_values(expr, offsets, total), total)
    probe = np.asarray(expr.fn({r.name: np.full((1,) + (1,) * (expr.rank - 1), r.mean) for r in expr.roots}))
    bshape = probe.shape[1:]
    v = raw.reshape(n_s, n_e, -1)
    w_s = weights.reshape(n_s, n_e).sum(axis=1)
    cdf = np.arange(1, n_e + 1) / n_e
    p = cdf ** window - (cdf - 1.0 / n_e) ** window
    ordered = np.sort(v, axis=1)
    m1 = np.einsum("e,seb->sb", p, ordered)
    m2 = np.einsum("e,seb->sb", p, ordered ** 2)
    mean_b = w_s @ m1
    var_b = np.maximum(w_s @ m2 - mean_b ** 2, 0.0)
    shared_b = np.clip(w_s @ m1 ** 2 - mean_b ** 2, 0.0, var_b)
    return mean_b.reshape(bshape), var_b.reshape(bshape), shared_b.reshape(bshape)
