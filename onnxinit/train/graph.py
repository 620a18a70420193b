"""The training graph: a model's forward pass plus a loss, its weights as inputs, and its gradients.

From the user's model, with logits z (a chosen output, the first by default), labels y and
per-sample weights s (an input, so one full-batch forward serves every sub-batch):

    ce:   l_i = -log softmax(z_i)[y_i]          (SoftmaxCrossEntropyLoss, reduction none)
    mse:  l_i = mean_j (z_ij - y_ij)^2
    L = sum_i s_i l_i                           (s_i = 1/N: the mean loss; 1/|S_d| on sub-batch d)
    or, built without the weights input, L = mean_i l_i.

For 'ce' the classes are on axis 1 of z (ONNX's convention); extra axes (N, C, d1, ...) are
averaged into l_i. Every float32 initializer of rank >= 1 that a node reads, except
BatchNormalization's running statistics, is a trainable weight: a graph input under its
own name. BatchNormalization runs in training mode
(batch statistics over the whole batch; running statistics neither used nor updated);
dropout is off; ops without a gradient in ONNX Runtime are rewritten (train/rewrites.py).
ONNX Runtime's training build (``GradientGraphBuilder``) then adds dL/dW for every weight W
as the outputs ``W_grad``. Variants serve the engine: the stacked graph (D gradients
from one forward pass), the frozen graph (gradients with activation patterns fixed at
reference weights, train/frozen.py) and the stacked frozen graph (K such gradients at K
weight points from one reference pass).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, inliner, numpy_helper, version_converter

from ..errors import OnnxInitError
from ..graph import Graph
from ..model_io import save_model
from .frozen import freeze_forward
from .rewrites import apply_rewrites

LABELS = "onnxinit/labels"
SAMPLE_WEIGHTS = "onnxinit/sample_weights"
PER_SAMPLE = "onnxinit/per_sample_loss"
LOSS = "onnxinit/loss"
MIN_OPSET, MAX_OPSET, MAX_IR = 14, 21, 10   # what ONNX Runtime 1.19's training build reads
LOSSES = ("ce", "mse")
# inputs that carry no gradient: BatchNormalization's running statistics, Resize's roi/scales
_NOT_TRAINABLE = {"BatchNormalization": (3, 4), "Resize": (1, 2), "Upsample": (1,)}
# input 2 of these is a bias
_BIAS_INPUT = {"Conv", "ConvTranspose", "Gemm", "BatchNormalization", "LayerNormalization",
               "InstanceNormalization", "GroupNormalization"}


def training_runtime():
    """(onnxruntime, GradientGraphBuilder, get_optimized_model) of the training build, or OnnxInitError."""
    try:
        import onnxruntime
        from onnxruntime.capi._pybind_state import GradientGraphBuilder, get_optimized_model
    except ImportError as exc:
        raise OnnxInitError("this needs ONNX Runtime's training build: pip install 'onnxinit[training]' in its "
                            "own environment (ONNX Runtime flavors exclude each other)") from exc
    return onnxruntime, GradientGraphBuilder, get_optimized_model


def session_options(runtime):
    """Quiet, and ONNX Runtime's threads sleep between runs: spinning ones starve the numpy work
    between the many short runs of NIO (on 2 cores, 9x slower iterations)."""
    options = runtime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@dataclass
class TrainingGraph:
    """The gradient graph and what is needed to feed it."""

    model: onnx.ModelProto               # forward + loss + gradients; weights are inputs
    forward: onnx.ModelProto             # forward only (same preparation), logits as the one output
    weights: dict[str, np.ndarray]       # trainable weights (float32) as the user's model holds them
    grads: dict[str, str]                # weight -> its gradient output
    inputs: list[str]                    # the model's data inputs
    logits: str
    logits_shape: tuple                  # from shape inference (str or None for open dims)
    loss_kind: str
    sample_weights: str | None           # the per-sample weights input, if built with one
    biases: frozenset = field(default_factory=frozenset)      # weights added to a signal
    batchnorm: frozenset = field(default_factory=frozenset)   # BatchNormalization scale and shift
    rewrites: dict = field(default_factory=dict)              # op type -> nodes rewritten
    labels: str = LABELS
    loss: str = LOSS

    def export(self, path, weights: dict | None = None) -> list[Path]:
        """Write the gradient graph to ``path`` atomically, ``weights`` (default: the model's)
        stored as the weight inputs' default values."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        values = {**self.weights, **(weights or {})}
        model.graph.initializer.extend(numpy_helper.from_array(np.asarray(values[n], np.float32), n)
                                       for n in self.weights)
        return save_model(model, path)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)


def _within_versions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset moved into [MIN_OPSET, MAX_OPSET] (version converter), IR version at most MAX_IR."""
    opset = _opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        target = min(max(opset, MIN_OPSET), MAX_OPSET)
        try:
            model = version_converter.convert_version(model, target)
        except Exception as exc:  # noqa: BLE001 - the converter raises several kinds
            raise OnnxInitError(f"training needs opset {MIN_OPSET}-{MAX_OPSET}; converting opset {opset} "
                                f"to {target} failed ({str(exc).splitlines()[0]})") from exc
    model.ir_version = min(model.ir_version, MAX_IR)
    return model


def trainable_weights(model: onnx.ModelProto) -> list[str]:
    """Float32 initializers of rank >= 1 from which a graph output can be reached through inputs
    that carry a gradient, in file order. Not: BatchNormalization's running statistics, nor a
    weight read only to compute them (a weight standardization's ReduceMean of its weight)."""
    reached = {o.name for o in model.graph.output}
    for node in reversed(list(model.graph.node)):
        if any(out in reached for out in node.output if out):
            skip = _NOT_TRAINABLE.get(node.op_type, ())
            reached.update(name for i, name in enumerate(node.input) if name and i not in skip)
    return [t.name for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1 and t.name in reached]


def weight_roles(model: onnx.ModelProto, weights) -> tuple[frozenset, frozenset]:
    """(biases, batchnorm): weights added to a signal (input 2 of Conv/Gemm/normalizations, or a
    1-D operand of Add), and BatchNormalization's scale and shift; Identity nodes looked through."""
    readers = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            readers[name].append((node, i))
    rank = {t.name: len(t.dims) for t in model.graph.initializer}
    biases, batchnorm = set(), set()
    for weight in weights:
        frontier = [weight]
        while frontier:
            for node, i in readers[frontier.pop()]:
                if node.op_type == "Identity":
                    frontier.append(node.output[0])
                elif (i == 2 and node.op_type in _BIAS_INPUT) or (node.op_type == "Add" and rank[weight] == 1):
                    biases.add(weight)
                if node.op_type == "BatchNormalization":
                    batchnorm.add(weight)
    return frozenset(biases), frozenset(batchnorm)


def _batchnorm_training_mode(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        attr = next((a for a in node.attribute if a.name == "training_mode"), None)
        if attr is None:
            node.attribute.append(helper.make_attribute("training_mode", 1))
        else:
            attr.i = 1
        while len(node.output) < 3:   # training mode has running mean and variance outputs
            node.output.append(f"{node.output[0]}_onnxinit_running_{len(node.output)}")


def _weights_as_inputs(model: onnx.ModelProto, weights: list[str], logits: str) -> None:
    """Weights leave the initializers for graph inputs; ``logits`` becomes the only output."""
    graph = model.graph
    moved = {t.name: t for t in graph.initializer if t.name in set(weights)}
    keep = [t for t in graph.initializer if t.name not in moved]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    declared = {i.name for i in graph.input}
    for name in weights:
        if name not in declared:
            graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(moved[name].dims)))
    elem = next((o for o in graph.output if o.name == logits), None)
    del graph.output[:]
    graph.output.append(elem if elem is not None else onnx.ValueInfoProto(name=logits))


def _mean_over(name: str, axes: list[int], out: str, opset: int) -> list[onnx.NodeProto]:
    """ReduceMean over ``axes`` (attribute before opset 18, input from 18 on)."""
    if opset < 18:
        return [helper.make_node("ReduceMean", [name], [out], axes=axes, keepdims=0)]
    return [helper.make_node("Constant", [], [out + "/axes"], value=numpy_helper.from_array(np.array(axes, np.int64))),
            helper.make_node("ReduceMean", [name, out + "/axes"], [out], keepdims=0)]


def _add_loss(model: onnx.ModelProto, logits: str, shape: tuple, loss: str, sample_weights: bool) -> None:
    """Labels (and per-sample weights) inputs, per-sample losses, the scalar loss output."""
    graph, opset, rank = model.graph, _opset(model), len(shape)
    batch = shape[0] or "batch"
    nodes = []
    if loss == "ce":
        if rank < 2:
            raise OnnxInitError(f"loss 'ce' needs logits of shape (N, C, ...); {logits!r} has rank {rank}")
        graph.input.append(helper.make_tensor_value_info(LABELS, onnx.TensorProto.INT64, [batch, *shape[2:]]))
        raw = PER_SAMPLE + "/raw" if rank > 2 else PER_SAMPLE
        # the log-probability output is what SoftmaxCrossEntropyLossGrad reads
        nodes.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits, LABELS], [raw, PER_SAMPLE + "/log_prob"],
                                      reduction="none"))
        if rank > 2:
            nodes += _mean_over(raw, list(range(1, rank - 1)), PER_SAMPLE, opset)
    else:
        graph.input.append(helper.make_tensor_value_info(LABELS, onnx.TensorProto.FLOAT, [batch, *shape[1:]]))
        nodes += [helper.make_node("Sub", [logits, LABELS], [PER_SAMPLE + "/diff"]),
                  helper.make_node("Mul", [PER_SAMPLE + "/diff", PER_SAMPLE + "/diff"],
                                   [PER_SAMPLE if rank == 1 else PER_SAMPLE + "/sq"])]
        if rank > 1:
            nodes += _mean_over(PER_SAMPLE + "/sq", list(range(1, rank)), PER_SAMPLE, opset)
    if sample_weights:
        graph.input.append(helper.make_tensor_value_info(SAMPLE_WEIGHTS, onnx.TensorProto.FLOAT, [batch]))
        nodes += [helper.make_node("Mul", [PER_SAMPLE, SAMPLE_WEIGHTS], [PER_SAMPLE + "/weighted"]),
                  helper.make_node("ReduceSum", [PER_SAMPLE + "/weighted"], [LOSS], keepdims=0)]
    else:
        nodes += _mean_over(PER_SAMPLE, [0], LOSS, opset)
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(LOSS, onnx.TensorProto.FLOAT, []))


def _builder_message(exc: Exception) -> str:
    """The useful part of an ONNX Runtime training error: what follows its source location
    ("/path/file.cc:123 function(signature) message")."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    found = re.search(r"was false\. (.*)", text)
    if found:
        return found.group(1).strip()
    return text.rsplit(") ", 1)[-1].removeprefix("const ").strip() if re.match(r"\S+:\d+ ", text) else text


def _gradient_model(runtime, builder_class, optimize, model: onnx.ModelProto, weights) -> onnx.ModelProto:
    """ONNX Runtime's gradient graph of ``model``'s LOSS wrt ``weights``."""
    options = session_options(runtime)
    serialized = model.SerializeToString()
    try:
        if any(n.op_type == "BatchNormalization" for n in model.graph.node):
            serialized = optimize(serialized, set(weights), options)   # BatchNormInternal has a gradient
        builder = builder_class(serialized, {LOSS}, set(weights), LOSS, options)
        builder.build()
        gradient = onnx.load_from_string(builder.get_model())
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises RuntimeError / Fail
        raise OnnxInitError(f"ONNX Runtime cannot build the gradient graph: {_builder_message(exc)} "
                            "(an op without a gradient can get a rewrite in rules/train_rewrites.toml)") from exc
    outputs = {o.name for o in gradient.graph.output}
    missing = [w for w in weights if f"{w}_grad" not in outputs]
    if missing:
        raise OnnxInitError(f"ONNX Runtime built no gradient for {missing[:5]}")
    return gradient


def build_training_graph(model: onnx.ModelProto, output_name: str | None = None, loss: str = "ce",
                         sample_weights: bool = True) -> TrainingGraph:
    """Forward + loss + gradient graph of ``model`` (not modified); see the module docstring."""
    runtime, builder_class, optimize = training_runtime()
    if loss not in LOSSES:
        raise OnnxInitError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    if prepared.functions:   # ONNX Runtime has no gradient for a call: the bodies, weights by name
        prepared = inliner.inline_local_functions(prepared)
    prepared = _within_versions(prepared)
    view = Graph(prepared)
    logits = output_name or (view.outputs[0] if view.outputs else None)
    if logits is None or (logits not in view.producer and logits not in view.inputs):
        raise OnnxInitError(f"no tensor named {output_name!r} in the model (outputs: {view.outputs})")
    shape = view.shape(logits)
    if shape is None:
        raise OnnxInitError(f"the rank of {logits!r} is unknown (shape inference could not follow the model)")
    weights = trainable_weights(prepared)
    if not weights:
        raise OnnxInitError("the model has no float32 weights to train")
    biases, batchnorm = weight_roles(prepared, weights)
    values = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer if t.name in set(weights)}
    inputs = [i for i in view.inputs if i not in values]
    rewrites = apply_rewrites(prepared)
    _batchnorm_training_mode(prepared)
    _weights_as_inputs(prepared, weights, logits)
    forward = onnx.ModelProto()
    forward.CopyFrom(prepared)
    _add_loss(prepared, logits, shape, loss, sample_weights)
    gradient = _gradient_model(runtime, builder_class, optimize, prepared, weights)
    return TrainingGraph(model=gradient, forward=forward, weights=values, grads={w: f"{w}_grad" for w in weights},
                         inputs=inputs, logits=logits, logits_shape=tuple(shape), loss_kind=loss,
                         sample_weights=SAMPLE_WEIGHTS if sample_weights else None,
                         biases=biases, batchnorm=batchnorm, rewrites=rewrites)


def frozen_gradient_graph(training: TrainingGraph) -> onnx.ModelProto:
    """The gradient graph of the frozen forward (train/frozen.py): the weights' gradients at
    the live weights with every activation pattern taken at the reference inputs ``ref/<W>``."""
    runtime, builder_class, optimize = training_runtime()
    model = freeze_forward(training.forward, list(training.weights))
    _add_loss(model, training.logits, training.logits_shape, training.loss_kind, training.sample_weights is not None)
    return _gradient_model(runtime, builder_class, optimize, model, list(training.weights))


def export_training_graph(model: onnx.ModelProto, path, output_name: str | None = None, loss: str = "ce",
                          sample_weights: bool = True) -> list[Path]:
    """Build the training graph of ``model`` and write it to ``path`` (temp file, then rename)."""
    return build_training_graph(model, output_name, loss, sample_weights).export(path)


def stacked_gradient_graph(training: TrainingGraph, count: int) -> onnx.ModelProto:
    """The gradient graph computing ``count`` gradients in one run over one forward pass.

    Every node that depends on the per-sample weights (the weighted loss and the whole
    backward pass) is copied ``count`` times; copy d reads the input ``<sample weights>/d``
    and writes ``<name>/d`` for each of its tensors, so the loss and gradient outputs become
    ``<name>/d``. The forward pass, which does not depend on the weights, is shared.
    """
    if training.sample_weights is None:
        raise OnnxInitError("stacked gradients need a training graph built with sample weights")
    return _stacked(training.model, {training.sample_weights}, count)


def stacked_frozen_graph(training: TrainingGraph, count: int) -> onnx.ModelProto:
    """The frozen gradient graph computing ``count`` gradients in one run, copy d at its own
    weights ``<W>/d`` and sample weights ``<sample weights>/d``; the reference pass (the
    activation patterns, from ``ref/<W>``) runs once for all of them."""
    if training.sample_weights is None:
        raise OnnxInitError("stacked gradients need a training graph built with sample weights")
    return _stacked(frozen_gradient_graph(training), {training.sample_weights, *training.weights}, count)


def _stacked(source: onnx.ModelProto, per_copy: set, count: int) -> onnx.ModelProto:
    """``source`` with every node that depends on the inputs ``per_copy`` copied ``count`` times:
    copy d reads ``<input>/d`` for those inputs and writes ``<name>/d`` for each of its tensors
    (outputs included); what depends on none of them is computed once and shared."""
    order = Graph(source).nodes
    tainted, backward = set(per_copy), []
    for node in order:
        if any(name in tainted for name in node.input):
            backward.append(node)
            tainted.update(out for out in node.output if out)
    stacked = onnx.ModelProto()
    stacked.CopyFrom(source)
    graph = stacked.graph
    del graph.node[:]
    graph.node.extend(n for n in order if not any(name in tainted for name in n.input))
    templates = [i for i in graph.input if i.name in per_copy]
    inputs = [i for i in graph.input if i.name not in per_copy]
    outputs = list(graph.output)
    del graph.input[:], graph.output[:]
    graph.input.extend(inputs)
    graph.output.extend(o for o in outputs if o.name not in tainted)
    for d in range(count):
        rename = {name: f"{name}/{d}" for name in tainted}
        for template in templates:
            row = graph.input.add()
            row.CopyFrom(template)
            row.name = rename[template.name]
        for index, node in enumerate(backward):
            copy = graph.node.add()
            copy.CopyFrom(node)
            copy.name = f"{node.name or node.op_type}#{index}/{d}"
            copy.input[:] = [rename.get(name, name) for name in node.input]
            copy.output[:] = [rename.get(name, name) for name in node.output]
        for info in [*outputs, *source.graph.value_info]:   # ORT reads shapes from value_info
            if info.name in tainted:
                copy = (graph.output if info in outputs else graph.value_info).add()
                copy.CopyFrom(info)
                copy.name = rename[info.name]
    return stacked
