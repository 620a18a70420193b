"""Softmax and LogSoftmax: p_j = exp(z_j) / sum_k exp(z_k) over a row.

The moments of p for Gaussian logits have no closed form (the denominator is a sum of
lognormals), so the rule integrates numerically: it draws rows of logits from the input's
per-site statistics at the input's real shape and evaluates the formula on them in numpy.

* Each element gets its site's mean plus its own Gaussian part; the input's shared part
  (one value per sample and channel, equal at every position) is drawn once per sample
  and channel. A softmax over a position axis therefore sees it as equal along the row,
  where it cancels exactly (softmax(z + c) = softmax(z)); over the channel axis it does not.
* Masked logits (-inf, from a causal or padding mask) give exp = 0: those keys take no weight.
* Below opset 13 the op works on the input flattened to 2-D at ``axis`` (the row is every
  axis from ``axis`` on); from 13 on the row is the one axis.
* Attention scores (a MatMul of two activations) are drawn from their factors, q @ K, so
  each query row's spread and the keys two queries share are as in the network (scores.py).
* For a softmax over the last axis of attention scores, tau = E[(sum_j p_j e_j)^2] -
  E[sum_j p_j^2] nu_e (over nu_e) is measured on the same rows (``ctx.softmax_tilt``), for
  the attention-weighted values that follow (transformer.attention_mix), and how much two
  queries read the same keys (``ctx.query_overlap``, montecarlo.query_overlap).

Output statistics per channel (axis 1), as for the Monte Carlo fallback (montecarlo.py),
whose sampler this rule shares; draws are seeded, so the result is deterministic.
"""
from __future__ import annotations

import numpy as np

from ..montecarlo import draw_samples, query_overlap, set_from_samples, softmax_tilt
from ..scores import draw_score_rows, score_factors_behind
from .common import Unsupported, attributes, softmax_on_last_axis

ELEMENTS = 1 << 17      # logits drawn per softmax (at least 2 samples)
MAX_PER_SAMPLE = 1 << 22


def row_softmax(z: np.ndarray, log: bool = False) -> np.ndarray:
    """Softmax (or its log) of ``z`` over the last axis; a row of only -inf gives 0 (log: -inf)."""
    top = np.max(z, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = z - top
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.sum(np.exp(shifted), axis=-1, keepdims=True)
        if log:
            return shifted - np.log(total)
        return np.where(total > 0, np.exp(shifted) / np.where(total > 0, total, 1.0), 0.0)


def _row_shape(dims, sig, axis):
    """The input's shape to draw at: static dims, else the length its sites span, else 1 on an
    axis where all elements are alike (drawing one stands for all). The row axis (every axis
    from ``axis`` on below opset 13: ``axis`` None) must be known."""
    dims = list(dims) if dims and len(dims) == sig.rank else [None] * sig.rank
    for a in range(1, sig.rank):
        if dims[a] is None and sig.axes[a] is not None:
            dims[a] = sig.axes[a].length
    if any(d is None for a, d in enumerate(dims) if a > 0 and (a == axis or axis is None)):
        raise Unsupported("unknown row length")
    return [dims[0]] + [1 if d is None else d for d in dims[1:]]


def softmax(node, rule, ctx):
    x, out = node.input[0], node.output[0]
    sig = ctx.signal(x)
    rank = sig.rank
    opset = ctx.graph.opsets.get("", 1)
    axis = int(attributes(node).get("axis", -1 if opset >= 13 else 1)) % rank
    dims = _row_shape(ctx.graph.static_dims(x), sig, axis if opset >= 13 else None)
    per_sample = int(np.prod(dims[1:], dtype=np.int64))
    if per_sample > MAX_PER_SAMPLE:
        raise Unsupported(f"{per_sample} elements a sample are too many to draw")
    shape = [dims[0] or int(np.clip(ELEMENTS // max(per_sample, 1), 2, 4096))] + list(dims[1:])
    parts = {}
    rng = np.random.default_rng(0)
    factors = score_factors_behind(x, ctx) if rank >= 3 and softmax_on_last_axis(node, ctx) else None
    z = draw_score_rows(sig, shape, factors, rng, parts) if factors else None
    if z is None:
        z = draw_samples(sig, shape, rng, parts)
    log = bool(rule.get("log", False))
    if opset >= 13:
        p = np.moveaxis(row_softmax(np.moveaxis(z, axis, -1), log), -1, axis)
    else:
        p = row_softmax(z.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1), log).reshape(shape)
    if not log and rank >= 3 and softmax_on_last_axis(node, ctx) and "element" in parts:
        ctx.softmax_tilt[out] = softmax_tilt(z, parts["element"], p, parts["within"], parts.get("row_var"))
        ctx.query_overlap[out] = query_overlap(p)
    set_from_samples(out, p, ctx)
