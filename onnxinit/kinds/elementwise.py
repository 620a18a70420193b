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

from ..numeric_ops import evaluate
from ..signal import MAX_ROOTS, GRID_BUDGET, Signal, align, collapse, grid_size
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


def combine(inputs, rank: int, names, out: str, ctx):
    """Align inputs on one grid, collapsing signal inputs to fresh Gaussians when the grid grows too big."""
    for c in inputs:
        if isinstance(c, np.ndarray) and c.ndim == rank and c.ndim > 0 and c.shape[0] != 1:
            raise Unsupported(f"constant of shape {c.shape} varies along the batch axis")
    roots, arrays, axes = align(inputs, rank)
    if len(roots) > MAX_ROOTS or grid_size(roots, axes) > GRID_BUDGET:
        n_signals = sum(isinstance(x, Signal) for x in inputs)
        inputs = [collapse(x, f"{name}@{out}", ctx.has_positions(name), n_signals - 1)
                  if isinstance(x, Signal) else x for x, name in zip(inputs, names)]
        roots, arrays, axes = align(inputs, rank)
    return roots, arrays, axes


def elementwise(node, rule, ctx):
    op_node = _op_node(node, rule)
    out = node.output[0]
    inputs = gather_inputs(node, ctx)
    rank = max([ctx.rank(out) or 0] + [x.rank for x in inputs if isinstance(x, Signal)] +
               [x.ndim for x in inputs if isinstance(x, np.ndarray)] + [1])
    roots, arrays, axes = combine(inputs, rank, list(node.input), out, ctx)
    try:
        result = evaluate(op_node, arrays, ctx.graph.opsets)
    except Exception as exc:  # noqa: BLE001 - the op cannot run on this grid
        raise Unsupported(f"{node.op_type} could not be evaluated ({exc})") from exc
    shape = tuple(len(r.nodes) for r in roots) + tuple(1 if s is None else s.size for s in axes)
    result = np.asarray(result, np.float64)
    if result.ndim != len(shape):
        raise Unsupported(f"{node.op_type} changed the rank of its input")
    ctx.set(out, Signal(roots, np.ascontiguousarray(np.broadcast_to(result, np.broadcast_shapes(result.shape, shape))),
                        axes))
