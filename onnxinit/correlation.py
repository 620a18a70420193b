"""Output units correlated through the weights of a pointwise layer (Gemm, MatMul, 1x1 conv).

The moment rules take the units of a tensor as independent. A pointwise layer's outputs at
one position are not: for inputs independent of each other with variances v_i,

    Cov(y_j, y_k) = alpha^2 sum_i C_ji C_ki v_i,      R_jk = Cov(y_j, y_k) / (sd_j sd_k),

about 1/sqrt(fan-in) for drawn weights. A later pointwise layer reading those units (through
elementwise ops) outputs, to first order in R (Stein: x_j = a_j z_j + a part uncorrelated
with z_j, a_j = E[x_j z_j] for the root z_j carrying unit j),

    E[y_o^2] = sum_j C_oj^2 E[x_j^2]  +  sum_{j != k} C_oj C_ok a_j a_k R_jk,

so a narrow layer's realized output is predicted for its very weights, not only on average
over draws. R is kept per root (``ctx.unit_correlation``: root name -> LazyCorrelation)
and computed only when a later pointwise layer reads it. A sum of such signals (a residual
stream) carries the sum of their covariances on its fresh root. A conv with a spatial kernel
and a small fan-in (a stem conv) correlates its channels the same way
(``_remember_conv_correlation``).
"""
from __future__ import annotations

import numpy as np

MAX_CORRELATED_UNITS = 2048        # dense layers without positions up to this width keep their units' correlations
MAX_CORRELATED_POSITIONWISE = 512  # ... 1x1 convs and dense layers on positions (token rows): the correlations
#                                    are about 1/sqrt(fan-in), they matter for narrow layers, and reading
#                                    them costs out x units^2
MAX_CORRELATED_FAN = 128           # convs with a spatial kernel: only a small fan-in (a stem conv reading 3 x 3 x 3
#                                    inputs) leaves correlations that matter (about 1/sqrt(fan-in))


class LazyCorrelation:
    """A correlation matrix over ``units`` units, computed on first use (up to 32 MB).
    ``axis``: where the units lie in the tensors carrying the root, counted from the last axis
    (-1: the last), so a broadcast that adds leading axes keeps it."""

    def __init__(self, compute, axis: int, units: int):
        self._compute = compute
        self._matrix = None
        self.axis = axis
        self.units = units

    @property
    def matrix(self) -> np.ndarray | None:
        if self._compute is not None:
            self._matrix = self._compute()
            self._compute = None
        return self._matrix


def unit_correlation(c: np.ndarray, var_in: np.ndarray, scale: float) -> np.ndarray | None:
    """R_jk = Corr(y_j, y_k) of a pointwise layer's outputs at one position, canonical weights
    ``c`` (out, fan, 1), for inputs independent of each other with variances ``var_in``."""
    out, fan, _ = c.shape
    if out < 2:
        return None
    w = c.reshape(out, fan).astype(np.float64) * np.sqrt(np.maximum(var_in, 0.0))[None, :]
    cov = w @ w.T * scale ** 2
    std = np.sqrt(np.maximum(np.diag(cov), 1e-30))
    return cov / np.outer(std, std)


def pointwise(layout) -> bool:
    """A layer whose every output unit reads all input units at one position and nothing else:
    Gemm/MatMul, or an ungrouped conv with a 1x1 kernel."""
    if layout.group_count != 1:
        return False
    return layout.kind in ("gemm", "matmul") or (layout.kind == "conv" and layout.canonical_shape[2] == 1)


def _per_unit(sig, site_array: np.ndarray, axis: int) -> np.ndarray:
    """A site-shaped array averaged over every axis but ``axis`` with the sites' weights."""
    others = tuple(d for d in range(sig.rank) if d != axis)
    sw = np.broadcast_to(sig.site_weights(), site_array.shape)
    return (np.sum(site_array * sw, axis=others) / np.sum(sw, axis=others)).reshape(-1)


def linear_part(sig, root: int, axis: int) -> np.ndarray:
    """a_j = E[x_j z] per unit along ``axis``, z the signal's root number ``root`` (Stein); for a
    Gaussian kept linear, its coefficient on z (its grid is not built)."""
    if sig.linear is not None:
        coef = np.broadcast_to(np.asarray(sig.linear[1][root], np.float64),
                               tuple(1 if a is None else a.size for a in sig.axes))
        return _per_unit(sig, coef, axis)
    w = np.ones(())
    for k, r in enumerate(sig.roots):
        w = np.multiply.outer(w, r.weights * (r.nodes if k == root else 1.0))
    return _per_unit(sig, np.tensordot(w, sig.values, axes=len(sig.roots)), axis)


def _linked(sig, ctx, kinds=("element", "sample")):
    """[(root number, LazyCorrelation)] of the signal's roots that carry unit correlations."""
    return [(i, ctx.unit_correlation[r.name]) for i, r in enumerate(sig.roots)
            if r.name in ctx.unit_correlation and r.kind in kinds]


def cross_terms(sig, ctx, axis: int):
    """(a, R, part) when the input units along ``axis`` are functions of the unit roots of
    earlier pointwise layers; ``part``: "within" where those roots vary from position to
    position (the covariance then averages away in a pooling over positions), else "shared".
    Several such roots (a residual sum kept on its inputs' grid, where one input is not
    Gaussian) add their covariances: a = 1 and R = I + sum_r (a_r a_r^T R_r - diag(a_r^2))."""
    linked = _linked(sig, ctx)
    if not linked:
        return None
    sites = sig.axes[axis]
    parts = {"element" if sig.roots[i].kind == "element" else "shared" for i, _ in linked}
    if len(parts) != 1 or any(sites is not None and sites.size != lazy.units for _, lazy in linked) \
            or len({lazy.units for _, lazy in linked}) != 1:
        return None
    part = "within" if parts == {"element"} else "shared"
    terms = []
    for i, lazy in linked:
        corr = lazy.matrix
        if corr is None:
            return None
        a = linear_part(sig, i, axis)
        terms.append((np.full(lazy.units, a[0]) if a.size == 1 else a, corr))
    if len(terms) == 1:
        return terms[0][0], terms[0][1], part
    units = linked[0][1].units
    combined = np.eye(units)
    for a, corr in terms:
        combined += np.outer(a, a) * corr
        combined[np.diag_indices(units)] -= a * a
    return np.ones(units), combined, part


def remember_layer_correlation(layer, signal, ctx) -> None:
    """Register the correlation of a pointwise layer's output units on the root that carries
    them: the one root of a dense output without positions, else the element root (inputs'
    variances: the part varying from position to position)."""
    layout, out_units = layer.layout, layer.layout.canonical_shape[0]
    if layout.kind == "conv" and not pointwise(layout) and out_units >= 2:
        _remember_conv_correlation(layer, signal, ctx)
        return
    if not pointwise(layout) or out_units < 2:
        return
    if signal.rank == 2 and len(signal.roots) == 1 and layout.kind != "conv":
        if out_units > MAX_CORRELATED_UNITS:
            return
        root, axis = signal.roots[0], -1
        var_in = (layer.inputs[1] + layer.inputs[2]).reshape(layer.inputs[1].shape[0], -1).mean(axis=1)
    else:
        root = next((r for r in signal.roots if r.kind == "element"), None)
        if root is None or out_units > MAX_CORRELATED_POSITIONWISE or not np.all(layer.inputs[3] > 0):
            return
        axis = next((a - signal.rank for a, s in enumerate(signal.axes)
                     if a > 0 and s is not None and s.size == out_units), None)
        if axis is None:
            return
        within = np.asarray(layer.inputs[2], np.float64).reshape(layer.inputs[2].shape[0], -1)
        sw = layer.site_weights if layer.inverse is None else np.bincount(
            layer.inverse, weights=layer.site_weights, minlength=within.shape[1])
        var_in = within @ (sw / sw.sum())
    weight, scale = layer.weight, layer.scale
    ctx.unit_correlation[root.name] = LazyCorrelation(
        lambda: unit_correlation(layout.to_canonical(ctx.value(weight)), var_in, scale), axis, out_units)


def remember_sum_correlation(signals, result, ctx) -> None:
    """A sum of signals (Add of a residual stream and a branch) on a fresh root: its units'
    covariance is the sum of the inputs' (sum_i a_ij a_ik R_i,jk), over the result's
    per-unit variance of that root's part."""
    if not ctx.unit_correlation:
        return
    target = next((r for r in result.roots if r.kind == "element"), None)
    kinds = ("element",)
    if target is None and len(result.roots) == 1:
        target, kinds = result.roots[0], ("element", "sample")
    if target is None:
        return
    parts = []   # (signal, root number, LazyCorrelation)
    for s in signals:
        for i, lazy in _linked(s, ctx, kinds):
            if lazy.axis < -s.rank or s.axes[lazy.axis] is None or s.axes[lazy.axis].size != lazy.units \
                    or result.axes[lazy.axis] is None or result.axes[lazy.axis].size != lazy.units:
                return
            parts.append((s, i, lazy))
    if not parts or len({(lazy.axis, lazy.units) for _, _, lazy in parts}) != 1:
        return
    axis, units = parts[0][2].axis, parts[0][2].units
    mean, var, shared = result.stats()
    total = _per_unit(result, var - shared if target.kind == "element" else var, result.rank + axis)
    linear = [(linear_part(s, i, s.rank + axis), lazy) for s, i, lazy in parts]

    def compute():
        cov = np.zeros((units, units))
        for a, lazy in linear:
            corr = lazy.matrix
            if corr is None:
                continue
            cov += np.outer(a, a) * corr
            cov[np.diag_indices(units)] -= a * a
        std = np.sqrt(np.maximum(total, 1e-30))
        corr = cov / np.outer(std, std)
        corr[np.diag_indices(units)] = 1.0
        return corr

    ctx.unit_correlation[target.name] = LazyCorrelation(compute, axis, units)


def _remember_conv_correlation(layer, signal, ctx) -> None:
    """Channels of an ungrouped conv with a spatial kernel and a small fan-in (a stem conv
    reading 3 x 3 x 3 inputs), at one position, for inputs independent from position to
    position (each tap reads another position):

        Cov(y_j, y_k) = alpha^2 sum_{i,t} C_jit C_kit nu_i,

    registered on the output's element root. A depthwise conv does not pass it on: its taps
    read the neighbours of a spatially correlated map, whose cross-position covariances the
    rules do not carry (tried: MobileNetV3's prediction got worse)."""
    layout = layer.layout
    out_units, fan, taps = layout.canonical_shape
    root = next((r for r in signal.roots if r.kind == "element"), None)
    if root is None or layout.group_count != 1 or fan * taps > MAX_CORRELATED_FAN \
            or out_units > MAX_CORRELATED_POSITIONWISE or signal.rank < 3 \
            or signal.axes[1] is None or signal.axes[1].size != out_units:
        return
    weight, scale = layer.weight, layer.scale
    var_in = _per_tap_variance(layer).reshape(-1)                             # per (channel, tap)
    ctx.unit_correlation[root.name] = LazyCorrelation(
        lambda: unit_correlation(layout.to_canonical(ctx.value(weight)).reshape(out_units, fan * taps, 1),
                                 var_in, scale), 1 - signal.rank, out_units)


def _per_tap_variance(layer) -> np.ndarray:
    """nu_e of each input channel at each tap, averaged over the output sites (0 where the tap
    falls in the padding): (channels, taps)."""
    within = np.asarray(layer.inputs[2], np.float64)                     # (channels, taps, distinct sites)
    valid = np.asarray(layer.inputs[3], np.float64)                      # (taps, sites)
    if layer.inverse is not None:
        within = within[:, :, layer.inverse]
    sw = np.broadcast_to(layer.site_weights, (within.shape[-1],))
    return np.einsum("cto,to,o->ct", within, np.broadcast_to(valid, within.shape[1:]), sw / sw.sum())
