"""Numpy forms of the common elementwise ONNX ops, in float64; any other op runs in onnx.reference.

Each entry follows the ONNX operator definition (attributes with the
defaults the spec gives). They are a fast path only: tests check each
against ONNX Runtime on random inputs.
"""
from __future__ import annotations

import numpy as np

from .kinds.common import attributes
from .op_eval import run_node

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x):
    """erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, far inside quadrature error)."""
    x = np.asarray(x, np.float64)
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    y = 1.0 - poly * np.exp(-a * a)
    return s * y


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _clip(x, lo=None, hi=None, attrs=None):
    attrs = attrs or {}
    lo = attrs.get("min", -np.inf) if lo is None else lo
    hi = attrs.get("max", np.inf) if hi is None else hi
    return np.clip(x, lo, hi)


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def _unary(op, a):
    """ops of one input and attributes ``a``."""
    return {
        "Relu": lambda x: np.maximum(x, 0.0),
        "LeakyRelu": lambda x: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
        "Elu": lambda x: np.where(x >= 0, x, a.get("alpha", 1.0) * np.expm1(np.minimum(x, 0.0))),
        "Selu": lambda x: a.get("gamma", 1.0507009873554805) * np.where(
            x > 0, x, a.get("alpha", 1.6732632423543772) * np.expm1(np.minimum(x, 0.0))),
        "Celu": lambda x: np.maximum(x, 0.0) + np.minimum(0.0, a.get("alpha", 1.0) * np.expm1(
            np.minimum(x, 0.0) / a.get("alpha", 1.0))),
        "ThresholdedRelu": lambda x: np.where(x > a.get("alpha", 1.0), x, 0.0),
        "Sigmoid": _sigmoid,
        "HardSigmoid": lambda x: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
        "HardSwish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
        "Tanh": np.tanh,
        "Softplus": lambda x: np.logaddexp(0.0, x),
        "Softsign": lambda x: x / (1.0 + np.abs(x)),
        "Erf": erf,
        "Gelu": lambda x: _gelu(x, _decode(a.get("approximate", "none"))),
        "Exp": lambda x: np.exp(np.minimum(x, 700.0)),
        "Neg": np.negative,
        "Abs": np.abs,
        "Identity": lambda x: x,
        "Mish": lambda x: x * np.tanh(np.logaddexp(0.0, x)),
        "Swish": lambda x: x * _sigmoid(a.get("alpha", 1.0) * x),
        "Sin": np.sin,
        "Cos": np.cos,
    }.get(op)


_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "PRelu": lambda x, slope: np.where(x >= 0, x, slope * x),
}


def _float_cast(node) -> bool:
    to = attributes(node).get("to")
    return to in (1, 10, 11, 16)  # float, float16, double, bfloat16


def evaluate(node, inputs: list, opsets: dict):
    """Output 0 of ``node`` on float64 arrays that broadcast together."""
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    present = [x for x in inputs if x is not None]
    if op is not None:
        unary = _unary(op, attributes(node)) if len(present) == 1 else None
        if unary is not None:
            return unary(present[0])
        if op in _BINARY and len(present) == 2 and len(inputs) == 2:
            return _BINARY[op](inputs[0], inputs[1])
        if op == "Div" and len(present) == 2:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.divide(inputs[0], inputs[1])
        if op in ("Max", "Min", "Sum", "Mean") and present:
            fn = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[op]
            out = present[0]
            for x in present[1:]:
                out = fn(out, x)
            return out / len(present) if op == "Mean" else out
        if op == "Clip" and inputs and inputs[0] is not None:
            extra = list(inputs[1:]) + [None, None]
            return _clip(inputs[0], extra[0], extra[1], attributes(node))
        if op == "Cast" and _float_cast(node):
            return inputs[0]
    return np.asarray(run_node(node, list(inputs), opsets)[0], np.float64)
