"""Tensors that neither carry the signal nor are constants, evaluated at batch size 1.

Exporters build attention masks from the batch size: transformers' causal-and-padding mask
gathers the rows of ``attention_mask`` with Range(batch) and expands to (batch, 1, T, T).
Shape arithmetic at the probe batch sizes (propagate._shape_data) leaves arrays that large
alone, so the mask was neither signal nor constant, and the Add or Where that applies it
passed the scores through unmasked. Evaluated at batch 1 (every Shape reads the batch dim as
1, a mask input is all ones, as measuring feeds it), the mask is a constant whose batch axis
has size 1 and broadcasts over any batch: with a mask of ones every batch row is alike.

IsNaN / IsInf of a signal read False everywhere: propagated signals are finite (a softmax row
whose every key is masked gives 0, not NaN).
"""
from __future__ import annotations

import numpy as np

from .op_eval import run_node, too_large

RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
MAX_NODES = 200       # ancestors evaluated for one tensor at most (each is two stack frames deep)


def value_at_batch_one(name: str, graph, is_signal, limit: int):
    """``name``'s value with the batch size 1, or None when it depends on the values of a signal
    (``is_signal``: propagated already) or of a graph input other than a mask (token ids), on
    a signal's unknown dim other than the batch, or on a random op."""
    known: dict[str, np.ndarray | None] = {}
    budget = [MAX_NODES]

    def value(tensor: str):
        if tensor in known:
            return known[tensor]
        known[tensor] = None                      # a cycle or a failure below reads as unknown
        constant = graph.constant_value(tensor)
        if constant is not None:
            known[tensor] = np.asarray(constant)
            return known[tensor]
        node = graph.producer.get(tensor)
        if node is None or is_signal(tensor) or node.domain not in ("", "ai.onnx") or node.op_type in RANDOM_OPS:
            return None
        budget[0] -= 1
        if budget[0] < 0:
            return None
        outputs = _evaluate(node, value, graph, is_signal, limit)
        if outputs is None:
            return None
        for out, result in zip([o for o in node.output if o], outputs):
            result = np.asarray(result)
            known[out] = result if result.size <= limit else None
        return known.get(tensor)

    return value(name)


def _evaluate(node, value, graph, is_signal, limit):
    op = node.op_type
    if op in ("Shape", "Size"):
        known = None if is_signal(node.input[0]) else value(node.input[0])
        if known is not None:
            dims = np.array(np.shape(known), np.int64)
        else:                                     # a signal: its static dims, the batch as 1
            dims = graph.static_dims(node.input[0])
            if not dims or any(d is None for d in dims[1:]):
                return None
            dims = np.array([1 if dims[0] is None else dims[0]] + list(dims[1:]), np.int64)
        if op == "Size":
            return [np.array(np.prod(dims), np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        return [dims[attrs.get("start", 0):attrs.get("end", len(dims))]]
    if op in ("IsNaN", "IsInf") and is_signal(node.input[0]):
        rank = len(graph.static_dims(node.input[0]) or [None])
        return [np.zeros((1,) * rank, bool)]
    inputs = [value(n) if n else None for n in node.input]
    if any(v is None for v, n in zip(inputs, node.input) if n) or too_large(node, inputs, limit):
        return None
    try:
        return run_node(node, inputs, graph.opsets)
    except Exception:  # noqa: BLE001 - an op the reference cannot run stays unknown
        return None
