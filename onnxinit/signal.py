"""A tensor's statistics as values on a quadrature grid of independent roots, per site.

A :class:`Signal` writes every element of a tensor as a function of a few
independent standard random variables, its *roots*, and stores that function
by its values at the roots' quadrature nodes:

    values[k_1, ..., k_r, s]  =  x at site s when root i sits at node k_i
    E[g(x_s)] = sum_k  w_1[k_1] ... w_r[k_r]  g(values[k, s]).

Gaussian roots use Gauss-Hermite nodes. A root is of one of two kinds:

* ``element``: independent from position to position (spatial or sequence
  axes, the axes after axis 1), as the part of a conv output that changes
  with the input patch;
* ``sample``: one value per sample, equal at all positions (a per-image offset,
  a squeeze-excite gate); pooling over positions does not average it away.

*Sites* are where the statistics differ: the site array has the tensor's
rank, size 1 on the batch axis and on every axis where all elements are
alike, and one entry per channel or per position class elsewhere. A spatial
axis shortened by zero padding keeps the positions near each border apart
and one class for the interior (:func:`edge_sites`), so the border effects of
padding on non-zero means follow the network layer after layer.

Elementwise chains are exact for free: x*Sigmoid(x) multiplies two arrays on
the same grid. Inputs with different roots meet on the product grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .moments import Moments

ELEMENT_NODES = 128    # Gauss-Hermite nodes of an element root (fewer when sites are many)
SAMPLE_NODES = 16      # ... of a sample root (a secondary part in practice)
MIN_NODES = 8
GRID_BUDGET = 1 << 19  # grid points x sites in one values array
SITE_BUDGET = 1 << 16  # sites per tensor beyond which positions are pooled (channels are kept)
MAX_ROOTS = 3          # more roots than this: inputs are collapsed to fresh Gaussians
SHARED_MIN = 0.02      # a sample root is kept when it carries at least this share of the variance
EDGE = 3               # positions kept apart next to each border of a padded axis


@lru_cache(maxsize=None)
def gauss_hermite(n: int):
    """Nodes and normalized weights for E[f(Z)], Z ~ N(0, 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


@dataclass(frozen=True, eq=False)
class Root:
    name: str
    kind: str                      # "element" | "sample"
    nodes: np.ndarray
    weights: np.ndarray

    @classmethod
    def gaussian(cls, name: str, kind: str, n: int) -> "Root":
        z, w = gauss_hermite(n)
        return cls(name, kind, z, w)


@dataclass(frozen=True, eq=False)
class Sites:
    """Classes of coordinates along one axis: class i covers [starts[i], starts[i] + counts[i])."""

    starts: np.ndarray
    counts: np.ndarray
    length: int

    @classmethod
    def full(cls, length: int) -> "Sites":
        return cls(np.arange(length), np.ones(length, np.int64), length)

    @property
    def size(self) -> int:
        return len(self.starts)

    @property
    def coords(self) -> np.ndarray:
        """A representative coordinate per class (the middle of its range)."""
        return self.starts + (self.counts - 1) // 2

    def index_of(self, coords: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.starts, coords, side="right") - 1, 0, self.size - 1)

    def same_as(self, other: "Sites") -> bool:
        return self.length == other.length and np.array_equal(self.starts, other.starts)


def edge_sites(length: int, edge: int = EDGE) -> Sites:
    """Each of the first and last ``edge`` positions apart, the interior as one class."""
    if length <= 2 * edge + 1:
        return Sites.full(length)
    starts = np.array(list(range(edge)) + [edge] + [length - edge + i for i in range(edge)])
    counts = np.array([1] * edge + [length - 2 * edge] + [1] * edge)
    return Sites(starts, counts, length)


class Signal:
    """roots, values (n_1, ..., n_r) + site shape, axes (per tensor axis: None or Sites).

    A Gaussian signal may be kept *linear*: ``linear = (mean, coefs)``, values =
    mean + sum_r coefs[r] * z_r, built only when ``values`` is first read; affine
    maps of it (BatchNorm) then cost nothing on the grid.
    """

    def __init__(self, roots, values, axes, _stats=None, affine: bool = False, linear=None):
        self.roots = tuple(roots)
        self._values = values
        self.axes = tuple(axes)
        self._stats = _stats
        self.affine = affine or linear is not None   # values affine in independent Gaussian roots
        self.linear = linear

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            mean, coefs = self.linear
            n = len(self.roots)
            shape = tuple(len(r.nodes) for r in self.roots) + tuple(1 if a is None else a.size for a in self.axes)
            values = np.empty(shape)   # built in place: the grid is the largest array of a step
            for i, (root, coef) in enumerate(zip(self.roots, coefs)):
                z = root.nodes.reshape([len(root.nodes) if j == i else 1 for j in range(n)] + [1] * len(self.axes))
                coef = np.asarray(coef, np.float64)
                if i:
                    values += z * coef
                elif np.broadcast_shapes(z.shape, coef.shape) == shape:
                    np.multiply(z, coef, out=values)
                else:
                    values[...] = z * coef
            if n == 0:
                values[...] = 0.0
            values += mean
            self._values = values
        return self._values

    @property
    def rank(self) -> int:
        return len(self.axes)

    @property
    def grid_shape(self) -> tuple:
        return tuple(len(r.nodes) for r in self.roots)

    def site_weights(self) -> np.ndarray:
        """Share of the tensor's elements each site stands for (sums to 1), site-shaped."""
        w = np.ones((1,) * self.rank)
        for a, sites in enumerate(self.axes):
            if sites is not None:
                shape = [1] * self.rank
                shape[a] = sites.size
                w = w * (sites.counts / sites.length).reshape(shape)
        return w

    def stats(self):
        """Per site: (mean, var, shared), shared = variance over the sample roots."""
        if self._stats is None:
            self._stats = _site_stats(self)
        return self._stats

    def moments(self) -> Moments:
        """Pooled over sites; the spread of the site means counts as shared (it is fixed per channel)."""
        mean_s, var_s, shared_s = self.stats()
        w = np.broadcast_to(self.site_weights(), mean_s.shape)
        w = w / w.sum()
        mean = float(np.sum(w * mean_s))
        second = float(np.sum(w * (var_s + mean_s ** 2)))
        shared_second = float(np.sum(w * (shared_s + mean_s ** 2)))
        return Moments(mean, second - mean * mean, shared_second - mean * mean).clamped()


def _grid_weights(roots) -> np.ndarray:
    w = np.ones(())
    for r in roots:
        w = np.multiply.outer(w, r.weights)
    return w


def _weighted_squares(wf: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """sum_i wf[i] flat[i, j]^2 per column j, in one pass without a squared copy of the grid."""
    return np.einsum("i,ij,ij->j", wf, flat, flat)


def _site_stats(sig: Signal):
    r = len(sig.roots)
    site_shape = sig.values.shape[r:]
    if r == 0:
        mean = np.asarray(sig.values, np.float64)
        zero = np.zeros_like(mean)
        return mean, zero, zero
    w = _grid_weights(sig.roots)
    flat = sig.values.reshape(w.size, -1)
    wf = w.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = wf @ flat
        second = _weighted_squares(wf, flat)
        var = np.maximum(second - mean * mean, 0.0)
    # a site equal at every node (a masked score at -inf) has no variance; only sites whose
    # variance came out non-finite or at rounding level can be such, so only they are compared
    suspect = np.flatnonzero(~np.isfinite(var) | (var <= 1e-12 * np.abs(second)))
    if suspect.size:
        constant = np.zeros(var.shape, bool)
        constant[suspect] = np.all(flat[:, suspect] == flat[:1, suspect], axis=0)
        mean = np.where(constant, flat[0], mean)
        var = np.where(constant, 0.0, var)
    sample_axes = [i for i, root in enumerate(sig.roots) if root.kind == "sample"]
    if not sample_axes:
        shared = np.zeros_like(var)
    elif len(sample_axes) == r:
        shared = var
    else:
        element_axes = tuple(i for i in range(r) if i not in sample_axes)
        we = _grid_weights([sig.roots[i] for i in element_axes])
        moved = np.moveaxis(sig.values, element_axes, tuple(range(len(element_axes))))
        conditional = np.tensordot(we, moved, axes=len(element_axes))   # (sample nodes..., sites)
        ws = _grid_weights([sig.roots[i] for i in sample_axes]).reshape(-1)
        c = conditional.reshape(ws.size, -1)
        with np.errstate(invalid="ignore"):
            shared = np.clip(ws @ (c * c) - mean * mean, 0.0, var)
        shared = np.where(np.isfinite(shared), shared, 0.0)   # a site at -inf everywhere (a masked score)
    return mean.reshape(site_shape), var.reshape(site_shape), shared.reshape(site_shape)


def nodes_for(n_roots: int, sites: int, cap: int) -> int:
    if n_roots == 0:
        return 1
    k = int((GRID_BUDGET / max(sites, 1)) ** (1.0 / n_roots))
    return max(MIN_NODES, min(cap, k))


def gaussian(name: str, mean, shared, within, axes, positions: bool, extra_roots: int = 0) -> Signal:
    """A fresh Gaussian signal with per-site mean and variance parts (site-shaped arrays).

    Node counts leave room in the grid budget for ``extra_roots`` more roots of
    the same size (the other inputs of the op this signal is made for).

    With positions, ``within`` goes to an element root and ``shared`` to a sample
    root (kept only when it carries at least SHARED_MIN of the variance, else
    merged into the element root); without positions one sample root carries all.
    """
    axes = tuple(axes)
    site_shape = tuple(1 if s is None else s.size for s in axes)
    mean = np.broadcast_to(np.asarray(mean, np.float64), site_shape)
    shared = np.broadcast_to(np.maximum(np.asarray(shared, np.float64), 0.0), site_shape)
    within = np.broadcast_to(np.maximum(np.asarray(within, np.float64), 0.0), site_shape)
    parts = []
    total_shared, total_within = float(np.sum(shared)), float(np.sum(within))
    if not positions:
        if total_shared + total_within > 0:
            parts.append(("sample", shared + within))
    elif total_shared > SHARED_MIN * (total_shared + total_within):
        if total_within > 0:
            parts.append(("element", within))
        parts.append(("sample", shared))
    elif total_shared + total_within > 0:
        parts.append(("element", shared + within))
    sites = int(np.prod(site_shape, dtype=np.int64))
    roots, coefs = [], []
    for kind, var in parts:
        cap = ELEMENT_NODES if kind == "element" else SAMPLE_NODES
        roots.append(Root.gaussian(f"{name}#{kind}", kind, nodes_for(len(parts) + extra_roots, sites, cap)))
        coefs.append(np.sqrt(var))
    var = shared + within
    known = (np.array(mean), np.array(var), np.array(shared if positions else var))
    if not roots:
        return Signal((), np.array(mean), axes, known, affine=True)
    return Signal(tuple(roots), None, axes, known, linear=(np.array(mean), coefs))


def constant_signal(value, rank: int) -> Signal:
    """A deterministic tensor (no roots) with sites along the axes where it varies."""
    value = np.asarray(value, np.float64)
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)
    axes = tuple(None if d == 1 else Sites.full(d) for d in value.shape)
    return Signal((), value, axes)


def collapse(sig: Signal, name: str, positions: bool, extra_roots: int = 0) -> Signal:
    """The Gaussian with the same per-site mean, shared and within variance, on fresh roots."""
    mean, var, shared = sig.stats()
    return gaussian(name, mean, shared, var - shared, sig.axes, positions, extra_roots)


def pool_positions(mean, shared, within, axes, site_weights):
    """Merge the sites of every axis after axis 1 into one class (a moment-matched mixture).

    Used where spelling positions out would exceed SITE_BUDGET: per channel,
    mean = sum_p w_p m_p, within = sum_p w_p (nu_p + m_p^2) - mean^2 - shared.
    """
    return pool_sites(mean, shared, within, axes, site_weights, keep=(0, 1))


def pool_sites(mean, shared, within, axes, site_weights, keep):
    """Merge the sites of every axis not in ``keep`` into one class, as pool_positions does."""
    pooled = tuple(a for a in range(len(axes)) if a not in keep)
    w = np.broadcast_to(site_weights, np.broadcast_shapes(np.shape(mean), np.shape(site_weights)))
    w = w / w.sum(axis=pooled, keepdims=True)
    m = (w * mean).sum(axis=pooled, keepdims=True)
    s = (w * shared).sum(axis=pooled, keepdims=True)
    second = (w * (shared + within + mean ** 2)).sum(axis=pooled, keepdims=True)
    return m, s, np.maximum(second - m * m - s, 0.0), tuple(a if i in keep else None for i, a in enumerate(axes))


def site_count(axes) -> int:
    return int(np.prod([1 if s is None else s.size for s in axes], dtype=np.int64))


def interpolation(z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(len(targets), len(z)) matrix: values at nodes z -> values at ``targets``, linear in z
    between nodes and extrapolated with the end slopes (exact for an affine function)."""
    hi = np.clip(np.searchsorted(z, targets), 1, len(z) - 1)
    lo = hi - 1
    t = (targets - z[lo]) / (z[hi] - z[lo])
    m = np.zeros((len(targets), len(z)))
    rows = np.arange(len(targets))
    m[rows, lo] = 1 - t
    m[rows, hi] += t
    return m


def resample(sig: Signal, nodes: int) -> Signal:
    """The same function of the same roots on at most ``nodes`` Gauss-Hermite nodes per Gaussian root.

    Values at the new nodes are interpolated from the old ones, so a non-Gaussian
    signal (a rectified stream) keeps its shape, unlike :func:`collapse`.
    """
    roots, values = list(sig.roots), sig.values
    for i, root in enumerate(sig.roots):
        if len(root.nodes) <= nodes or len(root.nodes) < 3:
            continue
        new = Root.gaussian(root.name, root.kind, nodes)
        matrix = interpolation(root.nodes, new.nodes)
        values = np.moveaxis(np.tensordot(matrix, values, axes=([1], [i])), 0, i)
        roots[i] = new
    # interpolation is exact on an affine function: a Gaussian stays one
    return Signal(tuple(roots), values, sig.axes, affine=sig.affine)


def with_axes(sig: Signal, axes) -> Signal:
    """Re-index ``sig`` onto other sites per axis (same rank); None target axes must be alike already."""
    values = sig.values
    r = len(sig.roots)
    for a, (have, want) in enumerate(zip(sig.axes, axes)):
        if want is None or (have is not None and have.same_as(want)):
            continue
        if have is None:
            continue  # alike along this axis: broadcasting does it
        index = have.index_of(want.coords)
        values = np.take(values, index, axis=r + a)
    return Signal(sig.roots, values, tuple(axes))


def stats_on(sig: Signal, axes) -> tuple:
    """``sig``'s per-site (mean, var, shared) re-indexed onto ``axes`` (rank >= sig.rank, leading
    axes added), without touching its grid values."""
    rank = len(axes)
    pad = rank - sig.rank
    have_axes = (None,) * pad + sig.axes
    site_shape = tuple(1 if s is None else s.size for s in axes)
    out = []
    for a in sig.stats():
        a = np.asarray(a).reshape((1,) * pad + np.shape(a))
        for i, (have, want) in enumerate(zip(have_axes, axes)):
            if want is not None and have is not None and not have.same_as(want):
                a = np.take(a, have.index_of(want.coords), axis=i)
        out.append(np.broadcast_to(a, site_shape))
    return tuple(out)


def merge_axis(candidates):
    """One Sites for an axis from the inputs' (None if all alike): the coarsest of the longest
    wins. Sites over a length-1 axis broadcast like an alike axis: they never win over a real
    axis (a (N, 2, C, 1, 1) gate times an (N, 2, C, H, W) map keeps the map's positions)."""
    present = [s for s in candidates if s is not None and s.length > 1]
    if not present:
        return None
    longest = max(s.length for s in present)
    return min((s for s in present if s.length == longest), key=lambda s: s.size)


def _lift(items, rank: int, values: bool = True):
    """Items brought to ``rank`` by leading size-1 axes; ``values=False`` lifts only a Signal's
    roots and sites (what :func:`layout` reads), so a linear Signal's grid is not built."""
    lifted = []
    for item in items:
        if isinstance(item, Signal):
            pad = rank - item.rank
            grid = None if not values else item.values.reshape(
                item.grid_shape + (1,) * pad + item.values.shape[len(item.roots):])
            lifted.append(Signal(item.roots, grid, (None,) * pad + item.axes))
        elif item is None:
            lifted.append(None)
        else:
            value = np.asarray(item)
            lifted.append(value.reshape((1,) * (rank - value.ndim) + value.shape))
    return lifted


def _layout(lifted, rank: int):
    axes = []
    for a in range(rank):
        sites = merge_axis([x.axes[a] for x in lifted if isinstance(x, Signal)])
        if sites is None:
            sizes = [x.shape[a] for x in lifted if isinstance(x, np.ndarray) and x.shape[a] > 1]
            sites = Sites.full(max(sizes)) if sizes else None
        axes.append(sites)
    return union_roots([x for x in lifted if isinstance(x, Signal)]), tuple(axes)


def layout(items, rank: int):
    """(roots, axes) that :func:`align` would give, without building the arrays."""
    return _layout(_lift(items, rank, values=False), rank)


def align(items, rank: int):
    """Bring Signals and constant arrays onto one grid: (roots, arrays, axes).

    Arrays come back with the union of roots as leading axes (size 1 where an
    input does not depend on a root) followed by ``rank`` site axes.
    """
    lifted = _lift(items, rank)
    roots, axes = _layout(lifted, rank)
    arrays = []
    for x in lifted:
        if x is None:
            arrays.append(None)
        elif isinstance(x, Signal):
            arrays.append(on_roots(with_axes(x, axes), roots))
        else:
            value = x
            for a, sites in enumerate(axes):
                if sites is not None and value.shape[a] > 1:
                    value = np.take(value, sites.coords, axis=a)
            arrays.append(value.reshape((1,) * len(roots) + value.shape))
    return roots, arrays, axes


def union_roots(signals) -> tuple:
    """The roots of all ``signals``, each once, in first-seen order."""
    roots, seen = [], set()
    for sig in signals:
        for root in sig.roots:
            if root.name not in seen:
                seen.add(root.name)
                roots.append(root)
    return tuple(roots)


def on_roots(sig: Signal, roots) -> np.ndarray:
    """sig.values with one leading axis per root of ``roots`` (size 1 where sig does not depend on it)."""
    order = {r.name: i for i, r in enumerate(roots)}
    r = len(sig.roots)
    perm = sorted(range(r), key=lambda i: order[sig.roots[i].name])
    v = np.transpose(sig.values, perm + list(range(r, sig.values.ndim)))
    shape = [1] * len(roots)
    for i in perm:
        shape[order[sig.roots[i].name]] = sig.values.shape[i]
    return v.reshape(shape + list(v.shape[r:]))


def grid_size(roots, axes) -> int:
    n = 1
    for r in roots:
        n *= len(r.nodes)
    for s in axes:
        n *= 1 if s is None else s.size
    return n



def element_cumulants(sig: Signal):
    """Per channel (axis 1), pooled over positions: (nu_e, kappa_3, kappa_4) of the element part.

    Conditional on the sample roots, the element part is what varies from position to
    position; its central moments c_k are taken over the element roots at each sample
    node and averaged over them: nu_e = E_s[c_2], kappa_3 = E_s[c_3], kappa_4 = E_s[c_4 - 3 c_2^2].
    Arrays of shape (channels,); None when the signal has no element root."""
    element = tuple(i for i, root in enumerate(sig.roots) if root.kind == "element")
    if not element or sig.rank < 2:
        return None
    n = len(sig.roots)
    values = sig.values
    shape_of = lambda keep: [len(root.nodes) if i in keep else 1 for i, root in enumerate(sig.roots)] + [1] * sig.rank
    sample = tuple(i for i in range(n) if i not in element)
    we = _grid_weights([sig.roots[i] for i in element]).reshape(shape_of(element))
    ws = _grid_weights([sig.roots[i] for i in sample]).reshape(shape_of(sample))
    d = values - np.sum(we * values, axis=element, keepdims=True)
    d2 = d * d
    c2 = np.sum(we * d2, axis=element, keepdims=True)
    c3 = np.sum(we * d2 * d, axis=element, keepdims=True)
    k4 = np.sum(we * d2 * d2, axis=element, keepdims=True) - 3.0 * c2 * c2
    grid = tuple(range(n))
    site_w = sig.site_weights()
    positions = tuple(range(2, sig.rank))
    site_w = site_w / site_w.sum(axis=positions, keepdims=True)
    pooled = []
    for c in (c2, c3, k4):
        per_site = np.sum(ws * c, axis=grid)                     # site-shaped
        per_site = np.sum(np.broadcast_to(site_w, per_site.shape) * per_site, axis=positions)
        pooled.append(per_site.reshape(-1))
    return tuple(pooled)


def _fleishman_moments(b, c, d):
    """E[t^2], E[t^3], E[t^4] - 3 of t = -c + b z + c z^2 + d z^3, z ~ N(0, 1) (Fleishman 1978)."""
    m2 = b * b + 6 * b * d + 2 * c * c + 15 * d * d
    m3 = 2 * c * (b * b + 24 * b * d + 105 * d * d + 2)
    m4 = 24 * (b * d + c * c * (1 + b * b + 28 * b * d) + d * d * (12 + 48 * b * d + 141 * c * c + 225 * d * d))
    return np.stack([m2, m3, m4])


def fleishman(skew, kurt, iterations: int = 40):
    """(b, c, d) per entry so t = -c + b z + c z^2 + d z^3 has mean 0, variance 1 and the given
    skewness and excess kurtosis (Newton's method). A pair no cubic reaches (or that does not
    converge) is shrunk toward (0, 0) by halves until one does; (1, 0, 0) is the Gaussian."""
    skew, kurt = np.asarray(skew, np.float64).reshape(-1), np.asarray(kurt, np.float64).reshape(-1)
    result = np.tile(np.array([[1.0], [0.0], [0.0]]), (1, skew.size))
    pending = np.ones(skew.size, bool)
    for shrink in (1.0, 0.5, 0.25, 0.125, 0.0625):
        if not pending.any():
            break
        target = np.stack([np.ones(pending.sum()), skew[pending] * shrink, kurt[pending] * shrink])
        x = np.tile(np.array([[1.0], [0.0], [0.0]]), (1, pending.sum()))
        with np.errstate(all="ignore"):
            for _ in range(iterations):
                f = _fleishman_moments(*x) - target
                if np.all(np.abs(f) < 1e-12):
                    break
                jac = np.empty((x.shape[1], 3, 3))
                for k in range(3):
                    step = np.zeros_like(x)
                    step[k] = 1e-6
                    jac[:, :, k] = ((_fleishman_moments(*(x + step)) - _fleishman_moments(*(x - step))) / 2e-6).T
                try:
                    x = x - np.linalg.solve(jac, f.T[:, :, None])[:, :, 0].T
                except np.linalg.LinAlgError:
                    break
            error = np.max(np.abs(_fleishman_moments(*x) - target), axis=0)
        good = np.isfinite(error) & (error < 1e-6) & (x[0] > 0)
        where = np.flatnonzero(pending)
        result[:, where[good]] = x[:, good]
        pending[where[good]] = False
    return result


def with_element_shape(sig: Signal, skew, kurt) -> Signal:
    """``sig`` (a fresh linear Gaussian) with its element root given per-channel skewness and
    excess kurtosis: its nodes z are mapped through Fleishman's cubic -c + b z + c z^2 + d z^3,
    whose first four moments the quadrature reproduces exactly, so every site keeps its mean,
    shared and within variance. The sum of a few taps of a skewed, heavy-tailed input (a
    depthwise conv after x*sigmoid(x)) is far from Gaussian, and the next nonlinearity sees it."""
    if sig.linear is None:
        return sig
    mean, coefs = sig.linear
    element = [i for i, root in enumerate(sig.roots) if root.kind == "element"]
    if not element:
        return sig
    e = element[0]
    root = sig.roots[e]
    site_shape = tuple(1 if a is None else a.size for a in sig.axes)
    if sig.rank < 2 or np.size(skew) not in (1, site_shape[1]):
        return sig
    b, c, d = fleishman(skew, kurt)
    z = root.nodes[:, None]
    t = -c + b * z + c * z * z + d * z ** 3                          # (nodes, channels)
    n = len(sig.roots)
    values = np.asarray(mean, np.float64)
    for i, (r, coef) in enumerate(zip(sig.roots, coefs)):
        if i == e:
            channels = t.shape[1]
            shape = [len(r.nodes) if j == i else 1 for j in range(n)] + [1] * sig.rank
            shape[n + 1] = channels
            values = values + t.reshape(shape) * coef
        else:
            z_i = r.nodes.reshape([len(r.nodes) if j == i else 1 for j in range(n)] + [1] * sig.rank)
            values = values + z_i * coef
    values = np.ascontiguousarray(np.broadcast_to(values, sig.grid_shape + site_shape), dtype=np.float64)
    return Signal(sig.roots, values, sig.axes, sig._stats)
