"""Einsum with two operands, read as the matrix product it spells.

    batch..., i, k  x  [batch...,] k, j  ->  batch..., i, j

is MatMul: with a weight it is a weighted layer (weighted.py, the MatMul layout), between
two activations the product rule or, for softmax rows times values, the attention mix
(transformer.py). Any other contraction of two activations, such as q_i . k_j written
"bhid,bhjd->bhij", is a sum over the contracted letters of products of independent factors:
    mean = K m_A m_B,   E[Y^2] = K (E[A^2] E[B^2] - m_A^2 m_B^2) + mean^2,
K the product of the contracted lengths. Other forms go to the Monte Carlo fallback.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from .common import Unsupported, attributes
from .transformer import matmul_product, product_of_independent
from .weighted import weighted

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
        raise Unsupported(f"einsum {equation!r} with a weight in other than MatMul form")
    contracted = (set(a) & set(b)) - set(out)
    if set(out) != (set(a) | set(b)) - contracted:
        raise Unsupported(f"einsum {equation!r} sums over a letter of one operand only")
    dims = ctx.graph.static_dims(first)
    if not dims or len(dims) != len(a) or any(not dims[a.index(letter)] for letter in contracted):
        raise Unsupported("unknown contraction length")
    k = int(np.prod([dims[a.index(letter)] for letter in contracted], dtype=np.int64))
    key_axis = b.index(out[-1]) - len(b) if out and out[-1] in b else None
    product_of_independent(node.output[0], first, second, k, ctx, key_axis)
