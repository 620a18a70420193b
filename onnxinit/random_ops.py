"""Random tensors built in the graph: drop path, hand-written dropout, noise injection.

timm's drop path exports as Mul(x, Div(Cast(Less(RandomUniformLike(ConstantOfShape(
[batch, 1, 1])), keep)), keep)): a mask that depends on no graph input, so it is neither a
signal nor a constant. Such a subgraph is run on its own at the probe batch size (the
batch dim the shape arithmetic was evaluated with, 9973, capped by MAX_ELEMENTS): random
ops and everything computed from their outputs keep their samples in ``ctx.probe_values``.
Where a sampled tensor meets the signal, its samples become a signal like a Monte Carlo
output (montecarlo.set_from_samples): a per-sample mask (shape [batch, 1, 1]) is all
shared, equal at every position, independent of the signal it multiplies.
"""
from __future__ import annotations

import numpy as np

from .op_eval import run_node

RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli"}
MAX_ELEMENTS = 1 << 22


def _probe_input(name: str, ctx):
    if not name:
        return None
    if name in ctx.probe_values:
        return ctx.probe_values[name]
    value = ctx.graph.constant_value(name)
    if value is not None:
        return value
    pair = ctx.graph.shape_values.get(name)
    return None if pair is None else np.asarray(pair[0])


def _capped(shape: np.ndarray) -> np.ndarray:
    """A probe shape whose leading (batch) dim is lowered so it holds at most MAX_ELEMENTS."""
    shape = shape.copy()
    rest = int(np.prod(shape[1:])) if shape.size > 1 else 1
    if shape.size and rest > 0 and shape[0] * rest > MAX_ELEMENTS:
        shape[0] = max(1, MAX_ELEMENTS // rest)
    return shape


def sample_random(node, ctx) -> bool:
    """Run ``node`` on probe samples when it is a random op or reads one; False when it is not
    such a node or cannot be run (it is then left to constant and shape folding)."""
    if node.domain not in ("", "ai.onnx"):
        return False
    shapes_a_random_op = node.op_type == "ConstantOfShape" and any(
        c.op_type in RANDOM_OPS for c in ctx.graph.consumers.get(node.output[0], []))
    if node.op_type not in RANDOM_OPS and not shapes_a_random_op \
            and not any(i in ctx.probe_values for i in node.input if i):
        return False
    values = [_probe_input(name, ctx) for name in node.input]
    if any(v is None for v, name in zip(values, node.input) if name):
        return False
    if shapes_a_random_op:
        values[0] = _capped(np.asarray(values[0], np.int64))
    if any(v is not None and np.size(v) > MAX_ELEMENTS for v in values):
        return False
    try:
        outputs = run_node(node, values, ctx.graph.opsets)
    except Exception:  # noqa: BLE001 - the reference cannot run it: leave it unknown
        return False
    for name, value in zip([o for o in node.output if o], outputs):
        if np.size(value) <= MAX_ELEMENTS:
            ctx.probe_values[name] = np.asarray(value)
    return True


def as_signal(name: str, ctx) -> bool:
    """Turn a sampled float tensor that meets the signal into a signal (see the module doc)."""
    from .montecarlo import set_from_samples
    value = ctx.probe_values.get(name)
    if value is None or not np.issubdtype(np.asarray(value).dtype, np.floating) or np.ndim(value) < 1:
        return False
    set_from_samples(name, value, ctx)
    return name in ctx.signals
