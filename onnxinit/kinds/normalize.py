"""Normalization: BatchNormalization (training or inference mode) and fixed-output ops."""
from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..quadrature import Expr, moments
from .common import attributes, has_positions


def _is_training(node, attrs) -> bool:
    if "training_mode" in attrs:
        return bool(attrs["training_mode"])
    # Before opset 14 the extra running-statistics outputs mark a training graph.
    return len([o for o in node.output if o]) > 1


def batchnorm(node, rule, ctx):
    """y = gamma * (x - m) / sqrt(v + eps) + beta, per channel (axis 1).

    Training mode normalizes with batch statistics: per channel (0, 1) before the
    affine part, so over channels mean = avg(beta), var = avg(gamma^2) + var(beta).
    Inference mode is a per-channel affine map of x with the running statistics,
    folded into x's expression.
    """
    attrs = attributes(node)
    x, out = node.input[0], node.output[0]
    names = {k: node.input[rule.get(k)] for k in ("scale", "bias", "mean", "var")}
    if ctx.scheme is not None:
        ctx.scheme.set_affine(node, names["scale"], names["bias"])
    values = {k: ctx.value(n) for k, n in names.items()}
    gamma = np.asarray(values["scale"] if values["scale"] is not None else 1.0, np.float64).reshape(-1)
    beta = np.asarray(values["bias"] if values["bias"] is not None else 0.0, np.float64).reshape(-1)
    rank = ctx.rank(out) or ctx.rank(x) or 4
    if _is_training(node, attrs):
        var = float(np.mean(gamma ** 2) + np.var(beta))
        m = Moments(float(np.mean(beta)), var, float(np.var(beta)) if has_positions(rank) else var)
        ctx.set(out, m)
        return
    eps = float(attrs.get("epsilon", 1e-5))
    running_mean = np.asarray(values["mean"], np.float64).reshape(-1)
    running_var = np.asarray(values["var"], np.float64).reshape(-1)
    a = gamma / np.sqrt(running_var + eps)
    b = beta - a * running_mean
    channel_shape = (-1,) + (1,) * max(rank - 2, 0)
    a, b = a.reshape(channel_shape), b.reshape(channel_shape)
    source = ctx.expr(x)
    expr = Expr(source.roots, lambda values: a * source.fn(values) + b, max(source.rank, rank), source.depth + 1)
    ctx.set(out, moments(expr), expr)


def fixed(node, rule, ctx):
    """Output statistics given by the rule itself (``mean``, ``var``)."""
    out = node.output[0]
    var = float(rule.get("var", 1.0))
    shared = var if not has_positions(ctx.rank(out)) else float(rule.get("shared", 0.0))
    ctx.set(out, Moments(float(rule.get("mean", 0.0)), var, shared))
