"""Normalizations spelled out op by op, recognized where their quotient is taken.

Exporters at older opsets write LayerNorm and RMSNorm as

    LayerNorm  d = x - ReduceMean(x);  d / Sqrt(ReduceMean(d^2) + eps)
    RMSNorm    x * Reciprocal(Sqrt(ReduceMean(x^2) + eps))      (LLaMA; or x / Sqrt(...),
               x * Pow(ReduceMean(x^2) + eps, -0.5), x * (1 / Sqrt(...)), Casts between)

Taken op by op, the quotient's numerator and its own root mean square r are independent
factors: E[(x/r)^2] = E[x^2] E[1/r^2], about D / (D - 2) for D normalized elements (and more
where r is carried as a Gaussian), where the quotient's mean square is 1. Recognized, the Mul
or Div gets the RMS normalization of its numerator (kinds/transformer.normalize, what
RMSNormalization gets; LayerNorm's numerator is already centered). The ops feeding it still
go their own way; nothing else reads them in these patterns.
"""
from __future__ import annotations

import numpy as np

from .kinds.common import attributes

COPIES = {"Cast", "Identity"}


def _producer(name: str, ctx, op_types):
    node = ctx.graph.producer.get(name)
    return node if node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types else None


def _through_copies(name: str, ctx) -> str:
    while (node := _producer(name, ctx, COPIES)) is not None:
        name = node.input[0]
    return name


def _scalar(name: str, ctx):
    value = ctx.value(name) if name else None
    if value is None or np.size(value) != 1:
        return None
    return float(np.asarray(value, np.float64).reshape(-1)[0])


def _reduced_axes(node, ctx):
    """The axes a ReduceMean averages over (attribute before opset 18, input after), or None
    when they are not known or it drops them (keepdims = 0)."""
    attrs = attributes(node)
    if not attrs.get("keepdims", 1):
        return None
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.value(node.input[1])
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    return None


def _mean_square(name: str, ctx):
    """(a, axes) when ``name`` is ReduceMean(a^2) (Pow(a, 2) or a * a), through Casts."""
    node = _producer(_through_copies(name, ctx), ctx, {"ReduceMean"})
    if node is None or (axes := _reduced_axes(node, ctx)) is None:
        return None
    square = _producer(_through_copies(node.input[0], ctx), ctx, {"Pow", "Mul"})
    if square is None:
        return None
    if square.op_type == "Pow" and _scalar(square.input[1], ctx) == 2.0:
        return square.input[0], axes
    if square.op_type == "Mul" and _through_copies(square.input[0], ctx) == _through_copies(square.input[1], ctx):
        return square.input[0], axes
    return None


def _plus_eps(name: str, ctx):
    """(mean square, eps) for ms + eps (eps a constant), or (name, 0)."""
    node = _producer(_through_copies(name, ctx), ctx, {"Add"})
    if node is not None:
        for i in (0, 1):
            eps = _scalar(node.input[1 - i], ctx)
            if eps is not None and eps >= 0:
                return node.input[i], eps
    return _through_copies(name, ctx), 0.0


def _root(name: str, ctx):
    """The s of Sqrt(s) or Pow(s, 0.5), through Casts."""
    node = _producer(_through_copies(name, ctx), ctx, {"Sqrt", "Pow"})
    if node is None or node.op_type == "Pow" and _scalar(node.input[1], ctx) != 0.5:
        return None
    return node.input[0]


def _inverse_root(name: str, ctx):
    """The s of 1 / Sqrt(s): Reciprocal(Sqrt(s)), Div(1, Sqrt(s)) or Pow(s, -0.5)."""
    node = _producer(_through_copies(name, ctx), ctx, {"Reciprocal", "Div", "Pow"})
    if node is None:
        return None
    if node.op_type == "Pow":
        return node.input[0] if _scalar(node.input[1], ctx) == -0.5 else None
    if node.op_type == "Div" and _scalar(node.input[0], ctx) != 1.0:
        return None
    return _root(node.input[-1], ctx)


def spelled_out_norm(node, ctx):
    """(numerator, axes, eps) when ``node`` (Mul or Div) divides a tensor by its own root mean
    square over its trailing axes (a LayerNorm's, the batch axis kept) or over axis 1 (the
    channels of an NCHW map, as ConvNeXt's channels-first LayerNorm spells it), else None.
    LayerNorm's numerator is already centered (x - ReduceMean(x)), so both forms are its RMS
    normalization."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    if node.op_type == "Div":
        pairs = [(node.input[0], _root(node.input[1], ctx))]
    else:
        pairs = [(node.input[i], _inverse_root(node.input[1 - i], ctx)) for i in (0, 1)]
    for numerator, stat in pairs:
        if stat is None or not ctx.is_signal(numerator):
            continue
        mean_square, eps = _plus_eps(stat, ctx)
        found = _mean_square(mean_square, ctx)
        if found is None or _through_copies(found[0], ctx) != _through_copies(numerator, ctx):
            continue
        rank = ctx.signal(numerator).rank   # known where shape inference lost it (opset-11 reshapes)
        axes = sorted({a % rank for a in found[1]}) if rank else []
        if axes and axes[0] > 0 and (axes == list(range(axes[0], rank)) or axes == [1]):
            return numerator, tuple(axes), eps
    return None
