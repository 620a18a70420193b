"""Pooling over the positions of one (sample, channel).

Given the shared part s, the window's values are i.i.d. draws of the within
part, so average-pooling k of them gives var = shared + within / k, and the max
of k has CDF F^k (quadrature.max_of_window). Global pooling leaves no
positions, so its output's shared variance is all of it.
"""
from __future__ import annotations

import numpy as np

from ..quadrature import channelwise, element_stats, max_of_window, pool_stats, to_channels
from .common import attributes


def _window(node, rule, ctx) -> int:
    attrs = attributes(node)
    if rule.get("global"):
        dims = ctx.graph.static_dims(node.input[0])
        spatial = dims[2:] if dims else None
        if not spatial or any(d is None for d in spatial):
            return 1 << 16   # unknown map size: a large window
        return int(np.prod(spatial))
    return int(np.prod(attrs.get("kernel_shape", [1])))


def pool(node, rule, ctx):
    x, out = node.input[0], node.output[0]
    k = max(_window(node, rule, ctx), 1)
    keeps_positions = not rule.get("global")
    expr = ctx.expr(x)
    if rule.get("reduce") == "max":
        mean_b, var_b, shared_b = max_of_window(expr, k)
    else:
        mean_b, var_b, shared_b = element_stats(expr)
        var_b = shared_b + (var_b - shared_b) / k
    if not keeps_positions:
        shared_b = var_b
    m = pool_stats(mean_b, var_b, shared_b)
    rank = ctx.rank(out) or expr.rank
    dims = ctx.graph.static_dims(out)
    channels = dims[1] if dims and len(dims) > 1 and dims[1] else None
    stats = to_channels(mean_b, var_b, shared_b, expr.rank, 1, channels) if channels else None
    if stats is None:
        ctx.set(out, m)
        return
    mean_c, shared_c, within_c = stats
    total = float(np.sum(shared_c + within_c))
    rho = float(np.sum(shared_c)) / total if keeps_positions and total > 0 else 1.0
    ctx.set(out, m, channelwise(out, mean_c, shared_c + within_c, rho, rank, 1))
