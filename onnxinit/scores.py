"""Attention score rows drawn from their factors, for the softmax rule.

Scores z_ij = a (q_i . k_j) + b_ij feed a softmax over the keys j. Per query row only the
part that varies from key to key matters (a part equal along the row cancels):

    z_ij - (row constant) = a sum_u Q_iu K_ju,    Q_i = q_i (the whole query),
                                                  K_j = k_j - avg_j E[k_j]  (its mean along the
                                                        keys removed, its shared part too).

Given Q_i the row is Gaussian over the keys with variance a^2 sum_u Q_iu^2 nu_K,u, which
varies from query to query (a query with a larger norm reads fewer keys), and two queries
read the same K_j (they prefer the same keys). Drawing every score independently with the
site's variance keeps neither: with 4-wide heads and an input mean of -1.5 the softmax
output's variance came out 10% high that way, within 3% drawn from q and k
(tests/test_rule_kinds_mc.py). The samples' LeViT block (8-wide heads) measures
E[sum_j p_j^2] = 0.053 where independent scores gave 0.035 and q @ K gives 0.036: most of
that gap is its tokens' non-Gaussian energy (a small-fan-in stem and HardSwish), which
per-site moments do not carry.

So the row-varying part is drawn as Q @ K from Gaussian draws of the two MatMul inputs
(their per-site statistics), scaled per site to the variance the score's rule predicts for
it (v - s), so the average spread is unchanged and only its distribution over rows and keys
changes. Used when the softmax input is the scores through scaling, masking and reshapes
that keep its shape (transformer.ROW_SOFTMAX_PATH) and the product's shape is the softmax
input's; otherwise the softmax draws scores independently, as before.
"""
from __future__ import annotations

import numpy as np

from .graph import upstream
from .montecarlo import site_grid

WALK = 6   # ops between the scores' MatMul and the softmax


def score_factors_behind(name: str, ctx):
    """((signal, static dims) of q, of k, whether k has its keys before its units) of the
    product whose scores reach ``name`` through ops that only scale, mask, shift or reshape
    them (taken: the softmax reads them once); None when there is none."""
    from .kinds.transformer import ROW_SOFTMAX_PATH
    for tensor in upstream(ctx.graph, name, ROW_SOFTMAX_PATH, WALK):
        if tensor in ctx.score_factors:
            return ctx.score_factors.pop(tensor)
    return None


def _factor(factor, batch: int, rng, token_axis: int, swap: bool = False):
    """A factor at its static shape (``batch`` samples) from its sites' statistics:
    (mean grid, variance grid, shared grid, shared draw, element draw); the shared part is
    drawn per sample and equal along ``token_axis``; ``swap``: a factor with its keys before its
    units (Einsum's k) is laid out as k^T. None without a static shape."""
    sig, dims = factor
    if sig is None or not dims or len(dims) < 3 or any(d is None for d in dims[1:]):
        return None
    dims = [batch] + list(dims[1:])
    m, v, s = site_grid(sig, dims)
    if swap:   # (..., keys, units) -> (..., units, keys)
        m, v, s = (np.swapaxes(a, -1, -2) for a in (m, v, s))
        dims = list(m.shape)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))):
        return None
    common = list(dims)
    common[token_axis] = 1
    return m, v, s, np.sqrt(s) * rng.standard_normal(common), np.sqrt(v - s) * rng.standard_normal(dims)


def draw_score_rows(sig, shape, factors, rng, parts: dict):
    """Scores of shape ``shape`` (the softmax input's, batch first) whose key-to-key part is
    drawn from q @ K (module docstring); None where the factors do not give that shape.
    ``parts`` gets the drawn key-to-key part ("element"), its mean variance ("within") and each
    row's variance given its query ("row_var", the rows' scale for montecarlo.softmax_tilt)."""
    batch = shape[0]
    keys_first = factors[2]
    q = _factor(factors[0], batch, rng, token_axis=-2)
    k = _factor(factors[1], batch, rng, token_axis=-1, swap=keys_first)
    if q is None or k is None or q[0].ndim != len(shape) or k[0].ndim != len(shape):
        return None
    q_mean, q_var, _, q_shared, q_element = q
    k_mean, k_var, k_shared_var, _, k_element = k
    k_offset = k_mean - k_mean.mean(axis=-1, keepdims=True)     # what differs from key to key
    try:
        product = np.matmul(q_mean + q_shared + q_element, k_offset + k_element)
        expected = np.matmul(q_mean ** 2 + q_var, k_offset ** 2 + (k_var - k_shared_var))
    except ValueError:
        return None
    if product.shape != tuple(shape):
        return None
    m, v, s = site_grid(sig, shape)
    within = v - s
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(expected > 0, np.sqrt(within / np.where(expected > 0, expected, 1.0)), 0.0)
    element = product * gain
    row = list(shape)
    row[-1] = 1
    finite = np.isfinite(m)
    parts["element"] = element
    parts["within"] = float(np.mean(within[finite])) if finite.any() else 0.0
    # each row's own variance given its query: sum_u Q_iu^2 E[K_ju^2] over its keys
    queries = q_mean + q_shared + q_element
    conditional = np.matmul(queries ** 2, k_offset ** 2 + (k_var - k_shared_var)) * gain ** 2
    read = finite & (within > 0)    # a masked key (-inf or -1e9, no spread) is no part of its row
    keys = np.maximum(np.sum(read, axis=-1, keepdims=True), 1)
    parts["row_var"] = np.sum(np.where(read, conditional, 0.0), axis=-1, keepdims=True) / keys
    return m + np.sqrt(s) * rng.standard_normal(row) + element
