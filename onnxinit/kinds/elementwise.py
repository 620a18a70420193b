"""Elementwise ops: moments of f(X) by running the op itself on a Gauss-Hermite grid.

No constants per activation: the node (or ``evaluate_as``) is executed with
onnx.reference on grid values of its varying inputs, so any elementwise op
ONNX defines is covered. Inputs that share roots fold into one function of
those roots (x*Sigmoid(x) is a function of x alone); inputs with different
roots are independent, giving a tensor grid over both (a residual Add).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..op_eval import run_node
from ..quadrature import Expr, moments
from .common import Unsupported, has_positions

MAX_ROOTS = 2    # more independent roots than this: inputs become fresh Gaussian roots
MAX_DEPTH = 24   # longer chains are cut, to bound re-evaluation cost


def _op_node(node, rule):
    target = rule.get("evaluate_as")
    if not target:
        return node
    return helper.make_node(target, list(node.input), list(node.output), **dict(rule.get("attributes", {})))


def _lift(array: np.ndarray, rank: int) -> np.ndarray:
    """Insert singleton axes after the grid axis so ``array`` has ``rank`` dims."""
    if array.ndim >= rank:
        return array
    return array.reshape(array.shape[:1] + (1,) * (rank - array.ndim) + array.shape[1:])


def elementwise(node, rule, ctx):
    op_node = _op_node(node, rule)
    out = node.output[0]
    inputs = []
    for name in node.input:
        if not name:
            inputs.append(None)
        elif ctx.is_signal(name):
            inputs.append(ctx.expr(name))
        else:
            value = ctx.value(name)
            if value is None:
                raise Unsupported(f"input {name!r} is neither signal nor a known constant")
            inputs.append(value.astype(np.float64) if value.dtype.kind == "f" else value)
    exprs = [e for e in inputs if isinstance(e, Expr)]
    rank = max([ctx.rank(out) or 0] + [e.rank for e in exprs] +
               [c.ndim for c in inputs if isinstance(c, np.ndarray)] + [1])
    for c in inputs:
        if isinstance(c, np.ndarray) and c.ndim == rank and c.shape[0] != 1:
            raise Unsupported(f"constant of shape {c.shape} varies along the batch axis")
    roots = {r.name: r for e in exprs for r in e.roots}
    if len(roots) > MAX_ROOTS or max(e.depth for e in exprs) >= MAX_DEPTH:
        inputs = [ctx.fresh_expr(name) if isinstance(e, Expr) else e for name, e in zip(node.input, inputs)]
        exprs = [e for e in inputs if isinstance(e, Expr)]
        roots = {r.name: r for e in exprs for r in e.roots}
    opsets = ctx.graph.opsets

    def fn(values):
        args = [_lift(np.asarray(a.fn(values)), rank) if isinstance(a, Expr) else a for a in inputs]
        return run_node(op_node, args, opsets)[0]

    expr = Expr(tuple(roots[k] for k in sorted(roots)), fn, rank, 1 + max(e.depth for e in exprs))
    try:
        m = moments(expr)
    except Unsupported:
        raise
    except Exception as exc:  # noqa: BLE001 - the op cannot run on this grid
        raise Unsupported(f"{node.op_type} could not be evaluated ({exc})") from exc
    if not has_positions(ctx.rank(out)) and ctx.rank(out) is not None:
        m = m.without_positions()
    ctx.set(out, m, expr)
