"""Weights torch.onnx merged because they were equal (all zeros) get one tensor per layer again;
weights a model really shares (distinct values) stay shared."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.graph import Graph
from onnxinit.inspect import inspect_model
from onnxinit.measure import gaussian_feeds, measure

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "resnet20_zero_init.onnx"


def _weight_sources(model):
    """Per Conv/Gemm node: the initializer its weight input reads (through Identity nodes)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    sources = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            name = node.input[1]
            while name in producers and producers[name].op_type == "Identity":
                name = producers[name].input[0]
            sources[node.name] = name
    return sources


def test_merged_zero_weights_are_drawn_per_layer():
    original = onnx.load(SAMPLE)
    merged = _weight_sources(original)
    assert len(set(merged.values())) < len(merged)    # the export really merged some (3 tensors x 3 convs)
    model, report = onnxinit.autoinit(SAMPLE, seed=3, return_report=True)
    sources = _weight_sources(model)
    assert len(set(sources.values())) == len(sources)
    assert len(report.structural_changes) == 3 and all("split into 3 tensors" in c for c in report.structural_changes)
    onnx.checker.check_model(model)
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    second_convs = [sources[n] for n in sources if n.endswith("conv2/Conv")]
    assert len(second_convs) == 9
    for name in second_convs:
        assert np.std(values[name]) > 0, name
    # each block's branch is drawn for its own input: every weighted layer in band, the output too
    outputs = {n.name: n.output[0] for n in model.graph.node}
    feeds = gaussian_feeds(model, 64, np.random.default_rng(0))
    measured = measure(model, [outputs[r.node] for r in report.layers] + [model.graph.output[0].name], feeds)
    for r in report.layers:
        assert 0.8 <= measured[outputs[r.node]][1] <= 1.25, (r.node, measured[outputs[r.node]])
    # the default (exported) init: every second conv outputs 0
    before = measure(original, [outputs[n] for n in outputs if n.endswith("conv2/Conv")], feeds)
    assert all(v[1] == 0 for v in before.values())


def test_other_schemes_untie_too():
    model = onnxinit.init(SAMPLE, scheme="he-normal", seed=0)
    sources = _weight_sources(model)
    assert len(set(sources.values())) == len(sources)
    model = onnxinit.wninit(SAMPLE, seed=0)
    assert len(set(_weight_sources(model).values())) == len(sources)


def _two_layers_sharing(value, ir_version=8, listed=False):
    """x -> MatMul(W) -> Relu -> MatMul(W): one initializer read by both layers."""
    w = numpy_helper.from_array(value.astype(np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W"], ["y"], name="second")]
    inputs = [x] + ([helper.make_tensor_value_info("W", TensorProto.FLOAT, [8, 8])] if listed else [])
    graph = helper.make_graph(nodes, "shared", inputs, [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir_version)


def test_shared_weight_with_distinct_values_stays_shared():
    model = _two_layers_sharing(np.random.default_rng(0).standard_normal((8, 8)))
    new, report = onnxinit.autoinit(model, return_report=True)
    assert [n.input[1] for n in new.graph.node if n.op_type == "MatMul"] == ["W", "W"]
    assert not report.structural_changes
    assert any("shared by several layers" in w for w in report.warnings)


def test_all_equal_weight_listed_as_an_input_ir3():
    """IR 3 lists initializers among the graph inputs: the copy is listed as well, and the model
    passes the checker and runs."""
    model = _two_layers_sharing(np.full((8, 8), 0.5), ir_version=3, listed=True)
    new, report = onnxinit.autoinit(model, return_report=True)
    names = [n.input[1] for n in new.graph.node if n.op_type == "MatMul"]
    assert names[0] == "W" and names[1] != "W" and names[1] in [i.name for i in new.graph.input]
    onnx.checker.check_model(new)
    a, b = (numpy_helper.to_array(t) for t in new.graph.initializer)
    assert not np.allclose(a, b)
    ort.InferenceSession(new.SerializeToString()).run(None, {"x": np.ones((2, 8), np.float32)})


def test_zero_bn_scales_read_through_identity_are_set_to_one():
    """LeViT's LinearNorm: BatchNorm1d over tokens flattened into rows, its scale 0 on each
    residual branch's last layer. torch.onnx merges those zeros with the BN shifts and running
    means (one tensor, read through Identity nodes): the scales become 1, the others stay 0."""
    path = SAMPLE.parent / "levit_block.onnx"
    model, report = onnxinit.autoinit(path, seed=1, return_report=True)
    graph = Graph(model)
    norms = [n for n in graph.nodes if n.op_type == "BatchNormalization"]
    assert len(norms) == 4 and len(report.structural_changes) == 1
    for node in norms:
        scale, shift, mean, var = (graph.constant_value(n) for n in node.input[1:5])
        assert np.all(scale == 1) and np.all(shift == 0) and np.all(mean == 0) and np.all(var == 1), node.name
    branches = [n.output[0] for n in graph.nodes if n.op_type == "Reshape" and "proj.1" in n.name or
                n.op_type == "Reshape" and "mlp.2" in n.name]
    feeds = gaussian_feeds(model, 128, np.random.default_rng(0))
    assert all(0.5 <= v[1] <= 2 for v in measure(model, branches, feeds).values())
    exported = measure(onnx.load(path), branches, feeds)
    assert all(v[1] == 0 for v in exported.values())   # as exported, both branches output 0
    # the pass read the scales it wrote (a scale folded through its Identity before it was set
    # stayed 0 for the pass, and the head was drawn for a residual stream without its MLP branch)
    again = inspect_model(model)
    assert all(abs(r.predicted.var - 1) < 1e-3 for r in again.rows if r.weighted), \
        [(r.node, r.predicted.var) for r in again.rows if r.weighted]
