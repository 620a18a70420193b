"""Weights an exporter merged because their values were equal, given back one tensor per layer.

torch.onnx keeps one copy of initializers with identical values. A residual branch's last
conv whose BatchNorm scale starts at 0 (timm's ``zero_init_last``) exports, BatchNorm folded
in, with an all-zero weight, and every such conv of one shape then reads the same tensor:
AutoInit can draw it only once, for the first of them (a RegNetZ-B16 export: 37 of 113
layers in band, output variance 2e8). A tensor whose elements are all equal carries no
learned value, so sharing it is the exporter's doing, not the model's: when a layer draws it
(a weighted layer's weight, a weight standardization's gain: weightstd.py), each node after
the first that reads it gets a copy of its own (``<name>_onnxinit_untied_<k>``), which the
scheme then draws. (An NFNet export reads the gain of one standardized conv, all 1/sqrt(fan-in),
from the tensor that is another conv's bias.) Weights shared with distinct values (ALBERT's
layers) stay shared.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import FLOAT_TYPES
from .model_io import is_deferred
from .rules import RuleTable
from .weightstd import PERMUTE_OPS


def _initializer_read(node, index, initializers, producers):
    """(initializer, (node, input index) that reads it) for input ``index`` of ``node``, through
    Identity nodes (torch.onnx reads a merged initializer through one Identity per use); None
    when that input is not an initializer."""
    name = node.input[index] if index < len(node.input) else ""
    while name not in initializers:
        producer = producers.get(name)
        if producer is None or producer.op_type != "Identity" or producer.domain not in ("", "ai.onnx"):
            return None
        node, index, name = producer, 0, producer.input[0]
    return name, (node, index)


def _weight_read(node, rule, initializers, producers):
    """The float initializer behind ``node``'s weight input under a weighted rule, and the
    (node, input index) reading it; None when there is none."""
    spec = rule.get("weight", 1)
    candidates = range(min(len(node.input), 2)) if spec == "any" else [int(spec)]
    for i in candidates:
        found = _initializer_read(node, i, initializers, producers)
        if found is not None and initializers[found[0]].data_type in FLOAT_TYPES:
            return found
    return None


def _all_equal(tensor: onnx.TensorProto) -> bool:
    if is_deferred(tensor):
        return False   # external data: not read just for this
    value = numpy_helper.to_array(tensor)
    return value.size > 1 and bool(np.all(value == value.reshape(-1)[0]))


def _standardization_gain(node, initializers, producers):
    """For a BatchNormalization in training mode over a weight (weight standardization,
    weightstd.py): the initializer behind its scale input; else None."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    if not any(a.name == "training_mode" and a.i for a in node.attribute):
        return None
    name = node.input[0]
    while name not in initializers:
        producer = producers.get(name)
        if producer is None or producer.op_type not in PERMUTE_OPS or producer.domain not in ("", "ai.onnx"):
            return None
        name = producer.input[0]
    found = _initializer_read(node, 1, initializers, producers)
    return None if found is None else found[0]


def untie_uniform_weights(model: onnx.ModelProto, table: RuleTable) -> list[str]:
    """Give every reader after the first of an all-equal initializer that some layer draws (a
    weighted layer's weight, a weight standardization's gain) a copy of its own; returns one
    line per tensor untied (the summary's structural changes)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    readers: dict[str, list] = {}
    drawn = set()
    for node in graph.node:
        if node.op_type != "Identity":
            for i in range(len(node.input)):
                found = _initializer_read(node, i, initializers, producers)
                if found is not None and found[1] not in readers.setdefault(found[0], []):
                    readers[found[0]].append(found[1])
        rule = table.lookup(node)
        if rule is not None and rule.kind == "weighted":
            found = _weight_read(node, rule, initializers, producers)
            if found is not None:
                drawn.add(found[0])
        gain = _standardization_gain(node, initializers, producers)
        if gain is not None:
            drawn.add(gain)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    changes = []
    for name in sorted(drawn, key=list(initializers).index):
        users = readers.get(name, [])
        if len(users) < 2 or initializers[name].data_type not in FLOAT_TYPES or not _all_equal(initializers[name]):
            continue
        for k, (node, index) in enumerate(users[1:], 1):
            copy_name = f"{name}_onnxinit_untied_{k}"
            while copy_name in taken:
                copy_name += "_"
            taken.add(copy_name)
            copy = graph.initializer.add()
            copy.CopyFrom(initializers[name])
            copy.name = copy_name
            node.input[index] = copy_name
            listed = next((i for i in graph.input if i.name == name), None)
            if listed is not None:   # IR < 4 lists initializers among the inputs: so is the copy
                entry = graph.input.add()
                entry.CopyFrom(listed)
                entry.name = copy_name
        changes.append(f"{name!r} (all elements equal) was read by {len(users)} nodes, merged by the "
                       f"exporter: each after the first reads a copy of its own")
    return changes
