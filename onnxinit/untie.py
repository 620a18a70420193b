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


FILLS = {"one": 1.0, "zero": 0.0}


def _role(node, index: int, rule, weight_index, gain_index) -> str:
    """What a scheme does to input ``index`` of ``node``: "drawn" (a weighted layer's weight, a
    weight standardization's gain: values of its own), "one" / "zero" (a normalization's scale /
    shift, a layer's bias: filled), or "other" (left as it is)."""
    if index in (weight_index, gain_index):
        return "drawn"
    if rule is None:
        return "other"
    if rule.kind == "weighted":
        return "zero" if index == rule.get("bias") else "other"
    if rule.kind == "batchnorm":
        return {rule.get("scale"): "one", rule.get("bias"): "zero"}.get(index, "other")
    if rule.kind in ("layernorm", "group_norm"):
        return {1: "one", 2: "zero"}.get(index, "other")
    return "other"


def _groups(readers, value: float) -> list:
    """Readers that may share one tensor: each drawn reader alone, the others by role (a fill
    equal to the tensor's value changes nothing: such readers go with the ones left alone)."""
    groups: dict = {}
    for k, (point, role) in enumerate(readers):
        if role in FILLS and FILLS[role] == value:
            role = "other"
        key = ("drawn", k) if role == "drawn" else role
        groups.setdefault(key, []).append(point)
    return list(groups.values())


def untie_uniform_weights(model: onnx.ModelProto, table: RuleTable) -> list[str]:
    """Split an all-equal initializer among its readers where a scheme would write them apart
    (see _role and _groups): the group of its first reader keeps it, every other group reads a
    copy. Returns one line per tensor split (the summary's structural changes)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    readers: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "Identity":
            continue
        rule = table.lookup(node)
        weight = _weight_read(node, rule, initializers, producers) if rule is not None and rule.kind == "weighted" \
            else None
        weight_index = next((i for i in range(len(node.input)) if weight is not None and
                             _initializer_read(node, i, initializers, producers) == weight), None)
        gain_index = 1 if _standardization_gain(node, initializers, producers) is not None else None
        if gain_index is not None:
            rule = None   # not a normalization of the signal
        for i in range(len(node.input)):
            found = _initializer_read(node, i, initializers, producers)
            if found is None or initializers[found[0]].data_type not in FLOAT_TYPES:
                continue
            entry = (found[1], _role(node, i, rule, weight_index, gain_index))
            points = [p for p, _ in readers.get(found[0], [])]
            if found[1] not in points:
                readers.setdefault(found[0], []).append(entry)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    changes = []
    for name, users in readers.items():
        if len(users) < 2 or not any(role != "other" for _, role in users) or not _all_equal(initializers[name]):
            continue
        value = float(numpy_helper.to_array(initializers[name]).reshape(-1)[0])
        groups = _groups(users, value)
        if len(groups) < 2:
            continue
        keeper = next(g for g in groups if users[0][0] in g)
        for k, group in enumerate([g for g in groups if g is not keeper], 1):
            copy_name = f"{name}_onnxinit_untied_{k}"
            while copy_name in taken:
                copy_name += "_"
            taken.add(copy_name)
            copy = graph.initializer.add()
            copy.CopyFrom(initializers[name])
            copy.name = copy_name
            for node, index in group:
                node.input[index] = copy_name
            listed = next((i for i in graph.input if i.name == name), None)
            if listed is not None:   # IR < 4 lists initializers among the inputs: so is the copy
                entry = graph.input.add()
                entry.CopyFrom(listed)
                entry.name = copy_name
        changes.append(f"{name!r} (all elements equal) was read by {len(users)} nodes, merged by the "
                       f"exporter: split into {len(groups)} tensors, one per layer it is drawn for or "
                       f"per value it is set to")
    return changes
