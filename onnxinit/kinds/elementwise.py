"""Elementwise ops: the op itself applied to its inputs' values on their quadrature grid.

No constants per activation: E[f(X)] comes from f evaluated at the nodes
(Gauss-Hermite for Gaussian roots), by numpy for the common ops
(:mod:`onnxinit.numeric_ops`) and by ``onnx.reference`` for any other op, so
every elementwise op ONNX defines is covered. Inputs that share roots are
combined node by node (x*Sigmoid(x) is exact); inputs with different roots
meet on the product grid (a residual Add of two independent branches).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..correlation import remember_sum_correlation
from ..numeric_ops import evaluate
from ..signal import (ELEMENT_NODES, GRID_BUDGET, MAX_ROOTS, MIN_NODES, Signal, align, collapse, gaussian,
                      grid_size, layout, nodes_for, resample, stats_on)
from .common import Unsupported


def _op_node(node, rule):
    target = rule.get("evaluate_as")
    if not target:
        return node
    return helper.make_node(target, list(node.input), list(node.output), **dict(rule.get("attributes", {})))


def gather_inputs(node, ctx):
    """Signals for signal inputs, float64 arrays for constants, None for omitted ones."""
    inputs = []
    for name in node.input:
        if not name:
            inputs.append(None)
        elif ctx.is_signal(name):
            inputs.append(ctx.signal(name))
        else:
            value = ctx.value(name)
            if value is None:
                raise Unsupported(f"input {name!r} is neither signal nor a known constant")
            inputs.append(value.astype(np.float64) if value.dtype.kind == "f" else value)
    return inputs


def _root_limit(sites: int) -> int:
    """How many roots a grid over ``sites`` may have at MIN_NODES nodes each (at least 1)."""
    limit = 1
    while limit < MAX_ROOTS and MIN_NODES ** (limit + 1) * sites <= 2 * GRID_BUDGET:
        limit += 1
    return limit


def fit_budget(inputs, rank: int, names, out: str, ctx):
    """Signal inputs made to fit one grid within the budget.

    Too many roots for the sites, where combining the inputs adds roots: signal inputs
    become fresh Gaussians (same per-site moments); too many nodes: roots are resampled on fewer nodes
    (the shape of a non-Gaussian input is kept).
    """
    for c in inputs:
        if isinstance(c, np.ndarray) and c.ndim == rank and c.ndim > 0 and c.shape[0] != 1:
            raise Unsupported(f"constant of shape {c.shape} varies along the batch axis")
    roots, axes = layout(inputs, rank)
    # collapsing makes inputs independent: only when combining them adds roots (x * erf(x)
    # shares its roots and needs no bigger grid than x itself already has)
    largest = max((len(x.roots) for x in inputs if isinstance(x, Signal)), default=0)
    if len(roots) > largest and len(roots) > min(MAX_ROOTS, _root_limit(grid_size((), axes))):
        n_signals = sum(isinstance(x, Signal) for x in inputs)
        inputs = [collapse(x, f"{name}@{out}", ctx.has_positions(name), n_signals - 1)
                  if isinstance(x, Signal) else x for x, name in zip(inputs, names)]
        roots, axes = layout(inputs, rank)
    if grid_size(roots, axes) > GRID_BUDGET:
        sites = grid_size((), axes)
        k = nodes_for(len(roots), sites, ELEMENT_NODES)
        inputs = [resample(x, k) if isinstance(x, Signal) else x for x in inputs]
    return inputs


def _gaussian_sum(node, inputs, rank, ctx):
    """Add/Sub/Sum of independent Gaussians (affine in their roots, no root in two inputs) is
    Gaussian: exact, on a fresh element root and sample root (never the product grid, which for
    two residual streams with a shared and a per-position part each would have four roots)."""
    if node.op_type not in ("Add", "Sub", "Sum") or node.domain not in ("", "ai.onnx"):
        return None
    signals = [x for x in inputs if isinstance(x, Signal)]
    if len(signals) < 2 or any(x is not None and not isinstance(x, Signal) for x in inputs):
        return None
    if any(not s.roots or not s.affine for s in signals):
        return None
    names = [r.name for s in signals for r in s.roots]
    if len(set(names)) != len(names):
        return None
    _, axes = layout(signals, rank)
    kinds = {r.kind for s in signals for r in s.roots}
    mean, shared, within = 0.0, 0.0, 0.0
    for i, s in enumerate(signals):
        m, v, sh = stats_on(s, axes)
        sign = -1.0 if node.op_type == "Sub" and i == 1 else 1.0
        mean, shared, within = mean + sign * m, shared + sh, within + (v - sh)
    out = node.output[0]
    result = gaussian(out, mean, shared, within, axes, ctx.has_positions(out) and kinds != {"sample"})
    remember_sum_correlation(signals, result, ctx)
    return result


def _independent_sum_stats(node, inputs, arrays, roots, axes):
    """Per-site (mean, var, shared) of Add/Sub/Sum when no two signal inputs share a root.

    Independent parts: means add (constants too), variances and shared parts add, exactly
    what the product grid gives, without a pass over it (a residual sum's grid is the
    largest of a network)."""
    if node.op_type not in ("Add", "Sub", "Sum") or node.domain not in ("", "ai.onnx"):
        return None
    signals = [x for x in inputs if isinstance(x, Signal)]
    names = [r.name for s in signals for r in s.roots]
    if len(names) != len(set(names)) or any(x is None for x in inputs):
        return None
    site_shape = tuple(1 if s is None else s.size for s in axes)
    mean, var, shared = np.zeros(site_shape), np.zeros(site_shape), np.zeros(site_shape)
    for i, (x, array) in enumerate(zip(inputs, arrays)):
        sign = -1.0 if node.op_type == "Sub" and i == 1 else 1.0
        if isinstance(x, Signal):
            m, v, sh = stats_on(x, axes)
            mean, var, shared = mean + sign * m, var + v, shared + sh
        else:
            constant = np.asarray(array, np.float64).reshape(np.shape(array)[len(roots):])
            if constant.dtype.kind not in "fiu" or not np.all(np.isfinite(constant)):
                return None
            mean = mean + sign * np.broadcast_to(constant, site_shape)
    return mean, var, shared


def _fill_along(values: np.ndarray, axis: int) -> np.ndarray:
    """NaN entries replaced by the nearest non-NaN entry along ``axis`` (earlier first)."""
    moved = np.moveaxis(values, axis, -1)
    n = moved.shape[-1]
    index = np.arange(n)
    valid = ~np.isnan(moved)
    before = np.maximum.accumulate(np.where(valid, index, -1), axis=-1)
    after = np.flip(np.minimum.accumulate(np.flip(np.where(valid, index, n), axis=-1), axis=-1), axis=-1)
    pick = np.where(before >= 0, before, np.minimum(after, n - 1))
    return np.moveaxis(np.take_along_axis(moved, pick, axis=-1), -1, axis)


def _clamped_to_domain(result: np.ndarray, arrays, n_roots: int) -> np.ndarray:
    """Nodes where the op is undefined for finite inputs (Sqrt, Log or Pow of the negative tail
    of the Gaussian standing in for a positive quantity, a mean of squares) take the value at the
    nearest node inside the domain, as if the input were clamped to it: the real tensor never
    goes there, and one NaN node would make every moment downstream NaN."""
    undefined = np.isnan(result)
    if not undefined.any():
        return result
    finite = np.ones(result.shape, bool)
    for a in arrays:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            finite &= np.broadcast_to(np.isfinite(a), result.shape)
    if not (undefined & finite).any():
        return result
    filled = np.where(undefined & ~finite, 0.0, result)   # genuinely undefined sites keep their NaN below
    filled = np.where(undefined & finite, np.nan, filled)
    for axis in range(n_roots):
        filled = _fill_along(filled, axis)
    return np.where(undefined & ~finite, np.nan, filled)


def elementwise(node, rule, ctx):
    op_node = _op_node(node, rule)
    out = node.output[0]
    inputs = gather_inputs(node, ctx)
    rank = max([ctx.rank(out) or 0] + [x.rank for x in inputs if isinstance(x, Signal)] +
               [x.ndim for x in inputs if isinstance(x, np.ndarray)] + [1])
    inputs = fit_budget(inputs, rank, list(node.input), out, ctx)
    exact = _gaussian_sum(node, inputs, rank, ctx)
    if exact is not None:
        ctx.set(out, exact)
        return
    roots, arrays, axes = align(inputs, rank)
    try:
        result = evaluate(op_node, arrays, ctx.graph.opsets)
    except Exception as exc:  # noqa: BLE001 - the op cannot run on this grid
        raise Unsupported(f"{node.op_type} could not be evaluated ({exc})") from exc
    shape = tuple(len(r.nodes) for r in roots) + tuple(1 if s is None else s.size for s in axes)
    result = np.asarray(result, np.float64)
    if result.ndim != len(shape):
        raise Unsupported(f"{node.op_type} changed the rank of its input")
    result = _clamped_to_domain(result, arrays, len(roots))
    ctx.set(out, Signal(roots, np.ascontiguousarray(np.broadcast_to(result, np.broadcast_shapes(result.shape, shape))),
                        axes, _independent_sum_stats(node, inputs, arrays, roots, axes)))
