"""Einsum with two operands, read as the matrix product it spells.

    batch..., i, k  x  [batch...,] k, j  ->  batch..., i, j

is MatMul: with a weight it is a weighted layer (weighted.py, the MatMul layout), between
two activations the product rule or, for softmax rows times values, the attention mix
(transformer.py). Any other contraction of two activations, such as q_i . k_j written
"bhid,bhjd->bhij", is a sum over the contracted letters of products of independent factors:
    mean = K m_A m_B,   E[Y^2] = K (E[A^2] E[B^2] - m_A^2 m_B^2) + mean^2,
K the product of the contracted lengths. A weight in any other layout ("dense general": Keras'
EinsumDense 'abc,cde->abde' and 'abcd,cde->abe', XLNet's 'ibh,hnd->ibnd') is a dense layer
whose fan-in is the product of the contracted lengths and whose output units are the weight's
other letters: see ``dense_general``. Other forms go to the Monte Carlo fallback.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..layouts import Layout
from ..signal import Sites, gaussian
from .common import Unsupported, attributes
from .transformer import matmul_product, product_of_independent
from .weighted import WeightedLayer, _shape_and_dtype, weighted

ELLIPSIS_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_equation(equation: str, ranks: list) -> tuple[list[str], str]:
    """Operand terms and the output term, an ellipsis spelled out with capital letters."""
    equation = equation.replace(" ", "")
    if "->" not in equation:
        raise Unsupported("einsum without an explicit output")
    left, out = equation.split("->")
    terms = left.split(",")
    if len(terms) != len(ranks):
        raise Unsupported("einsum operands do not match the equation")
    widest = 0
    spelled = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            if rank is None:
                raise Unsupported("einsum ellipsis over an operand of unknown rank")
            n = rank - (len(term) - 3)
            widest = max(widest, n)
            term = term.replace("...", ELLIPSIS_LETTERS[-n:] if n else "")
        spelled.append(term)
    out = out.replace("...", ELLIPSIS_LETTERS[-widest:] if widest else "")
    if any(len(set(t)) != len(t) for t in spelled + [out]):
        raise Unsupported("einsum with a repeated letter in one term (a diagonal)")
    return spelled, out


def _matmul_form(a: str, b: str, out: str) -> bool:
    """a = batch + i + k, b = (a suffix of batch) + k + j, out = batch + i + j: MatMul, broadcasting."""
    if len(a) < 2 or len(b) < 2:
        return False
    i, k, j = a[-2], a[-1], b[-1]
    batch = a[:-2]
    return b[-2] == k and batch.endswith(b[:-2]) and out == batch + i + j and len({i, j, k}) == 3 \
        and not set(batch) & {i, j, k}


def einsum(node, rule, ctx):
    if len(node.input) != 2:
        raise Unsupported("einsum of other than two operands")
    first, second = node.input[:2]
    equation = attributes(node).get("equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    (a, b), out = parse_equation(equation, [ctx.rank(first), ctx.rank(second)])
    as_matmul = helper.make_node("MatMul", [first, second], [node.output[0]], name=node.name)
    signals = [ctx.is_signal(first), ctx.is_signal(second)]
    if _matmul_form(a, b, out):
        if all(signals):
            matmul_product(as_matmul, ctx)
        else:
            weighted(as_matmul, rule, ctx)
            if ctx.layers and ctx.layers[-1].node == (node.name or node.output[0]):
                ctx.layers[-1].op_type = node.op_type
        return
    if not all(signals):
        weight_at = signals.index(False)
        if not signals[1 - weight_at] or not ctx.graph.is_weight(node.input[weight_at]):
            raise Unsupported(f"einsum {equation!r} of a signal and a constant that is not a weight")
        return dense_general(node, ctx, (a, b)[1 - weight_at], (a, b)[weight_at], out,
                             node.input[1 - weight_at], node.input[weight_at])
    contracted = (set(a) & set(b)) - set(out)
    if set(out) != (set(a) | set(b)) - contracted:
        raise Unsupported(f"einsum {equation!r} sums over a letter of one operand only")
    dims = ctx.graph.static_dims(first)
    if not dims or len(dims) != len(a) or any(not dims[a.index(letter)] for letter in contracted):
        raise Unsupported("unknown contraction length")
    k = int(np.prod([dims[a.index(letter)] for letter in contracted], dtype=np.int64))
    key_axis = b.index(out[-1]) - len(b) if out and out[-1] in b else None
    scores = len(a) == len(b) == len(out) >= 3 and a[:-2] == b[:-2] == out[:-2] and a[-1] == b[-1] \
        and (a[-2], b[-2]) == (out[-2], out[-1])   # q_i . k_j: 'bhid,bhjd->bhij'
    product_of_independent(node.output[0], first, second, k, ctx, key_axis,
                           row_factors="keys_first" if scores else None)


def dense_general(node, ctx, a: str, w: str, out: str, x: str, weight: str):
    """y[batch, U] = sum_K x[batch, K] W[K, U] with the letters of W in any order: K the letters
    x and W share (summed), U the letters of W alone (output units), batch the letters of x
    alone. A weighted layer with canonical weights C[u, k] = W permuted to (U, K): per output
    unit, mean = sum_k C_uk m_k, variance = sum_k C_uk^2 nu_k for inputs independent of each
    other, with x's per-element statistics along K pooled over its batch letters (their
    spread of means counted as shared)."""
    contracted = [c for c in a if c in w and c not in out]
    units = [c for c in w if c not in a]
    batch = [c for c in a if c not in w]
    if not contracted or not units or len(contracted) + len(units) != len(w) or set(out) != set(batch) | set(units):
        raise Unsupported(f"einsum {''.join(a)},{''.join(w)}->{out}: a weight sharing a kept letter with the input")
    shape, dtype = _shape_and_dtype(weight, ctx)
    if len(shape) != len(w):
        raise Unsupported(f"weight {weight!r} of rank {len(shape)} does not match {''.join(w)!r}")
    layout = Layout("einsum", tuple(shape), order=tuple(w.index(c) for c in units + contracted), units=len(units))
    sig = ctx.signal(x)
    if sig.rank != len(a):
        raise Unsupported("einsum operand rank does not match the equation")
    stats = _per_contracted(sig, a, contracted, [shape[w.index(c)] for c in contracted])
    inputs = tuple(s.reshape(-1, 1, 1).astype(np.float32) for s in stats) + (np.ones((1, 1)),)
    layer = WeightedLayer(node, weight, None, layout, ctx.moments[x], inputs, np.ones(1), None, 1.0,
                          np.dtype(dtype))
    layer.last_stats = None
    if ctx.scheme is not None:
        ctx.scheme.draw_weighted(layer, ctx)
    mean, shared, within = layer.last_stats or layer.unit_stats(layout.to_canonical(ctx.value(weight)))
    unit_shape = [shape[w.index(c)] for c in units]
    placed = [c for c in out if c in units]             # the output's order of the unit letters
    perm = [units.index(c) for c in placed]
    site_shape = [shape[w.index(c)] if c in units else 1 for c in out]
    arrays = [np.transpose(v.reshape(unit_shape), perm).reshape(site_shape) for v in (mean, shared, within)]
    axes = tuple(Sites.full(shape[w.index(c)]) if c in units and shape[w.index(c)] > 1 else None for c in out)
    ctx.set(node.output[0], gaussian(node.output[0], *arrays, axes, ctx.has_positions(node.output[0])))
    ctx.layer_outputs[node.output[0]] = layer
    ctx.record_layer(layer, ctx.moments[node.output[0]])


def _per_contracted(sig, a: str, contracted: list, lengths: list) -> tuple:
    """(mean, shared, within) per element of the contracted letters (in ``contracted`` order,
    raveled), pooled over the other axes with the sites' weights."""
    mean, var, shared = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    axes = [a.index(c) for c in contracted]
    pooled_axes = tuple(i for i in range(len(a)) if i not in axes)
    total = w.sum(axis=pooled_axes, keepdims=True)

    def pool(v):
        return (np.broadcast_to(v, mean.shape) * w).sum(axis=pooled_axes, keepdims=True) / total

    m = pool(mean)
    second = pool(var + mean ** 2)
    s = np.clip(pool(shared) + pool(mean ** 2) - m ** 2, 0.0, None)
    out = []
    for v in (m, s, np.maximum(second - m ** 2 - s, 0.0)):
        for axis, length in zip(axes, lengths):
            sites = sig.axes[axis]
            if v.shape[axis] == length:
                continue
            if sites is not None and sites.length == length and v.shape[axis] == sites.size:
                v = np.take(v, sites.index_of(np.arange(length)), axis=axis)
            elif v.shape[axis] == 1:
                v = np.repeat(v, length, axis=axis)
            else:
                raise Unsupported(f"input has {v.shape[axis]} entries along a contracted axis of length {length}")
        out.append(np.squeeze(v, axis=pooled_axes).reshape(-1))   # contracted letters are in x's order
    return tuple(out)
