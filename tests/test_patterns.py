"""Residual blocks, stages and weight norms found in exported graphs (issue 6): onnxinit/patterns.py, weightnorm.py."""
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from conftest import ALL_SAMPLES
from onnxinit.graph import Graph
from onnxinit.patterns import find_structure
from onnxinit.wn_api import wninit

SAMPLE = {p.stem: p for p in ALL_SAMPLES}


def structure(path_or_model):
    model = onnx.load(path_or_model) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    return find_structure(Graph(model))


# --- the samples ------------------------------------------------------------------
CIFAR = {  # name: (blocks per stage, shortcut of each stage's first block)
    "resnet20_nobn": ([3, 3, 3], ["identity", "projection", "projection"]),
    "resnet20_bn_train": ([3, 3, 3], ["identity", "projection", "projection"]),
    "resnet20_wn": ([3, 3, 3], ["identity", "projection", "projection"]),
    "resnet56_wn": ([9, 9, 9], ["identity", "projection", "projection"]),
    "resnet56_nobn": ([9, 9, 9], ["identity", "projection", "projection"]),
    "resnet_bottleneck": ([2, 2, 2], ["projection", "projection", "projection"]),
}


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_resnet_samples_blocks_and_stages(name):
    counts, first_shortcuts = CIFAR[name]
    s = structure(SAMPLE[name])
    assert [st.count for st in s.stages] == counts
    assert len(s.blocks) == sum(counts) and not s.skipped
    kind = "bottleneck" if "bottleneck" in name else "basic"
    for stage, first in zip(s.stages, first_shortcuts):
        blocks = [s.blocks[i - 1] for i in stage.blocks]
        assert [b.shortcut for b in blocks] == [first] + ["identity"] * (len(blocks) - 1)
        assert all(b.kind == kind for b in blocks)
    # first / last / shortcut layers are exactly the modules PyTorch named so
    last_conv = "conv3" if kind == "bottleneck" else "conv2"
    for b in s.blocks:
        assert len(b.first) == 1 and "/conv1/" in b.first[0], b
        assert len(b.last) == 1 and f"/{last_conv}/" in b.last[0], b
        assert (b.projection is not None) == (b.shortcut == "projection")
        if b.projection:
            assert "shortcut" in b.projection
    roles = {layer.name: layer.role for layer in s.layers}
    assert roles["/stem/Conv"] == "stem" and roles["/fc/Gemm"] == "head"
    assert sum(r == "middle" for r in roles.values()) == (sum(counts) if kind == "bottleneck" else 0)
    # weight norm on every layer of the _wn samples, on none elsewhere
    assert all((layer.weight_norm is not None) == name.endswith("_wn") for layer in s.layers)


def test_pre_activation_bottleneck_projection_reads_the_preactivated_input():
    s = structure(SAMPLE["resnet_bottleneck"])
    first = s.blocks[0]
    graph = Graph(onnx.load(SAMPLE["resnet_bottleneck"]))
    assert graph.producer[first.input].op_type == "Relu"       # x = relu(bn1(stream)), shared by both sides
    assert graph.producer[s.blocks[1].input].op_type == "Add"  # identity block: the stream itself


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: p.stem)
def test_never_crashes_and_feed_forward_graphs_have_no_block(path):
    s = structure(path)
    assert s.layers
    if path.stem in ("mlp_relu_deep", "mlp_selu_dropout", "mlp_wn", "cnn_plain", "cnn_swish", "densenet_block",
                     "shufflenet_units"):
        assert not s.blocks and not s.stages
        assert all(layer.role == "feed-forward" for layer in s.layers)


def test_transformer_residuals_are_blocks_of_one_stream():
    s = structure(SAMPLE["bert_tiny"])
    assert [st.count for st in s.stages] == [4]
    assert [b.shortcut for b in s.blocks] == ["identity"] * 4


def test_rectifier_detection():
    s = structure(SAMPLE["mlp_relu_deep"])
    assert [layer.rectified for layer in s.layers] == [True] * (len(s.layers) - 1) + [False]
    assert not any(layer.rectified for layer in structure(SAMPLE["mlp_selu_dropout"]).layers)


# --- hand-built graphs --------------------------------------------------------------
def _conv(name, x, c_in, c_out, k=3, stride=1, inits=None):
    w = np.random.default_rng(len(inits)).standard_normal((c_out, c_in, k, k)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, f"{name}.w"))
    return helper.make_node("Conv", [x, f"{name}.w"], [name], name=name, pads=[k // 2] * 4, strides=[stride] * 2)


def _model(nodes, inits, out, channels=8, size=8, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_two_weighted_sides_are_not_a_block_and_downsampling_shortcuts_start_stages():
    inits = []
    nodes = [_conv("a", "x", 8, 8, inits=inits), _conv("b", "x", 8, 8, inits=inits),
             helper.make_node("Add", ["a", "b"], ["sum"], name="sum")]   # inception-like: 1 layer on each side
    assert not structure(_model(nodes, inits, "sum")).blocks
    # option-A CIFAR shortcuts: strided slicing on the shortcut, no weights
    inits = []
    starts, ends, axes, steps = ([0, 0], [99, 99], [2, 3], [2, 2])
    for n, v in zip(("st", "en", "ax", "sp"), (starts, ends, axes, steps)):
        inits.append(numpy_helper.from_array(np.array(v, np.int64), n))
    nodes = [_conv("c1", "x", 8, 8, inits=inits), helper.make_node("Relu", ["c1"], ["r1"]),
             _conv("c2", "r1", 8, 8, inits=inits), helper.make_node("Add", ["x", "c2"], ["y1"], name="add1"),
             _conv("c3", "y1", 8, 8, stride=2, inits=inits), helper.make_node("Relu", ["c3"], ["r3"]),
             _conv("c4", "r3", 8, 8, inits=inits),
             helper.make_node("Slice", ["y1", "st", "en", "ax", "sp"], ["down"]),
             helper.make_node("Add", ["down", "c4"], ["y2"], name="add2")]
    s = structure(_model(nodes, inits, "y2"))
    assert [b.shortcut for b in s.blocks] == ["identity", "downsampling"]
    assert [st.count for st in s.stages] == [1, 1]
    assert {layer.name: layer.role for layer in s.layers} == {"c1": "first", "c2": "last", "c3": "first", "c4": "last"}


def _wn_model(kind, n_in=8, n_out=6, opset=17):
    """x (N, n_in) -> dense layer whose weight is g * v / ||v|| written one of several ways."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal((n_out, n_in)).astype(np.float32)
    inits = [numpy_helper.from_array(v, "v")]
    g = rng.random((n_out, 1)).astype(np.float32) + 0.5
    nodes, weight, layer = [], "w", "Gemm"
    if kind == "reduce_l2":                       # torch's export, opset 17
        nodes = [helper.make_node("ReduceL2", ["v"], ["n"], axes=[1], keepdims=1),
                 helper.make_node("Div", ["v", "n"], ["d"]), helper.make_node("Mul", ["d", "g"], ["w"])]
    elif kind == "reduce_l2_axes_input":          # opset 18: axes as an input; g first
        opset = 18
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        nodes = [helper.make_node("ReduceL2", ["v", "axes"], ["n"], keepdims=1),
                 helper.make_node("Div", ["v", "n"], ["d"]), helper.make_node("Mul", ["g", "d"], ["w"])]
    elif kind == "pow_sum_sqrt":                  # decomposed norm, g unsqueezed and divided first
        g = g.reshape(-1)
        inits += [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                  numpy_helper.from_array(np.array([1], np.int64), "axes")]
        nodes = [helper.make_node("Pow", ["v", "two"], ["sq"]), helper.make_node("ReduceSum", ["sq", "axes"], ["ss"]),
                 helper.make_node("Sqrt", ["ss"], ["n"]), helper.make_node("Unsqueeze", ["g", "axes"], ["gu"]),
                 helper.make_node("Div", ["gu", "n"], ["scale"]), helper.make_node("Mul", ["v", "scale"], ["w"])]
    elif kind == "reciprocal_transpose_matmul":   # v * (1/||v||) * g, then MatMul(x, W^T)
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        nodes = [helper.make_node("Mul", ["v", "v"], ["sq"]), helper.make_node("ReduceSum", ["sq", "axes"], ["ss"]),
                 helper.make_node("Sqrt", ["ss"], ["n"]), helper.make_node("Reciprocal", ["n"], ["inv"]),
                 helper.make_node("Mul", ["v", "inv"], ["d"]), helper.make_node("Mul", ["d", "g"], ["wt"]),
                 helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0])]
        layer = "MatMul"
    elif kind == "whole_tensor":                  # weight_norm(dim=None): one norm, scalar g
        g = np.array(2.0, np.float32)
        nodes = [helper.make_node("ReduceSumSquare", ["v"], ["ss"], keepdims=1),
                 helper.make_node("Sqrt", ["ss"], ["n"]), helper.make_node("Div", ["v", "n"], ["d"]), helper.make_node("Mul", ["d", "g"], ["w"])]
    elif kind == "lp_normalization":
        nodes = [helper.make_node("LpNormalization", ["v"], ["d"], axis=1, p=2),
                 helper.make_node("Mul", ["d", "g"], ["w"])]
    elif kind == "not_a_norm":                    # g * v: a computed weight, but no weight norm
        nodes = [helper.make_node("Mul", ["v", "g"], ["w"])]
    inits.append(numpy_helper.from_array(g, "g"))
    if layer == "Gemm":
        nodes.append(helper.make_node("Gemm", ["x", weight], ["y"], name="dense", transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["x", weight], ["y"], name="dense"))
    nodes.append(helper.make_node("Relu", ["y"], ["out"]))
    graph = helper.make_graph(nodes, "wn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", n_out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


WN_KINDS = ["reduce_l2", "reduce_l2_axes_input", "pow_sum_sqrt", "reciprocal_transpose_matmul", "whole_tensor",
            "lp_normalization"]


@pytest.mark.parametrize("kind", WN_KINDS)
def test_weight_norm_forms_detected_and_written_exactly(kind):
    model = _wn_model(kind)
    onnx.checker.check_model(model)
    graph = Graph(model)
    wn = graph.weight_norm("w")
    assert wn is not None and (wn.v, wn.g) == ("v", "g") and wn.shape == ((8, 6) if "matmul" in kind else (6, 8))
    new, result = wninit(model, seed=1, return_report=True)
    layer = result.layers[0]
    assert layer.weight_norm["v"] == "v" and layer.role == "feed-forward" and layer.rectified
    assert layer.gain == pytest.approx(np.sqrt(2 * 8 / 6))
    w = Graph(new).weight_norm("w").evaluate(Graph(new))
    rows = w.T if "matmul" in kind else w
    np.testing.assert_allclose(rows @ rows.T, layer.gain ** 2 * np.eye(6), atol=1e-5)
    tensors = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    if kind != "whole_tensor":   # per-row weight norm: v has unit rows, g is the gain
        np.testing.assert_allclose(np.linalg.norm(tensors["v"], axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(tensors["g"], layer.gain, rtol=1e-6)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    got = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x @ rows.T, 0), rtol=1e-5, atol=1e-5)


def test_a_computed_weight_that_is_not_a_weight_norm_is_left_alone():
    model = _wn_model("not_a_norm")
    assert Graph(model).weight_norm("w") is None
    s = structure(model)
    assert not s.layers and len(s.skipped) == 1 and "not a weight norm" in s.skipped[0]


def test_autoinit_writes_weight_normalized_layers_through_v_and_g():
    source = onnx.load(SAMPLE["mlp_wn"])
    model, report = onnxinit.autoinit(source, seed=3, return_report=True)
    assert len(report.layers) == 8 and not report.fallbacks
    before = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(not np.array_equal(before[n], after[n]) for n in after if "weight_v" in n or "weight_g" in n)
    assert [n.SerializeToString() for n in model.graph.node] == [n.SerializeToString() for n in source.graph.node]
    graph = Graph(model)
    for r in report.layers:    # the weight the layer computes is the one AutoInit drew (its recorded std)
        w = graph.weight_norm(r.weight).evaluate(graph)
        assert np.sqrt(np.mean(w.astype(np.float64) ** 2)) == pytest.approx(r.std, rel=1e-5)


# --- torchvision-style ResNets, built and exported here -------------------------------
def torchvision_resnet(depth: int, base: int = 64):
    """ResNet-18/34 (basic) or -50/101/152 (bottleneck) as torchvision builds them: 7x7 stem, max-pool,
    post-activation blocks with BatchNorm, a projection on the first block of a stage when shapes change."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    counts = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
    expansion = 1 if depth < 50 else 4

    class Block(nn.Module):
        def __init__(self, c_in, width, stride):
            super().__init__()
            c_out = width * expansion
            if expansion == 1:
                convs = [nn.Conv2d(c_in, width, 3, stride, 1, bias=False), nn.Conv2d(width, width, 3, 1, 1, bias=False)]
            else:
                convs = [nn.Conv2d(c_in, width, 1, bias=False), nn.Conv2d(width, width, 3, stride, 1, bias=False),
                         nn.Conv2d(width, c_out, 1, bias=False)]
            self.convs = nn.ModuleList(convs)
            self.bns = nn.ModuleList(nn.BatchNorm2d(c.out_channels) for c in convs)
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = x
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                out = bn(conv(out))
                out = torch.relu(out) if i < len(self.convs) - 1 else out
            return torch.relu(out + (x if self.down is None else self.down(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
            layers, c_in = [], base
            for i, n in enumerate(counts):
                for j in range(n):
                    layers.append(Block(c_in, base * 2 ** i, 2 if i > 0 and j == 0 else 1))
                    c_in = base * 2 ** i * expansion
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(c_in, 1000)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(x), 1), 1))

    return ResNet(), counts


def export(model, path, training=False, size=64):
    torch = pytest.importorskip("torch")
    model.train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(2, 3, size, size), str(path), dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL,
                          do_constant_folding=not training, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def _check_torchvision(depth, tmp_path, training):
    net, counts = torchvision_resnet(depth)
    start = time.perf_counter()
    path = export(net, tmp_path / f"resnet{depth}.onnx", training=training)
    exported = time.perf_counter() - start
    s = structure(path)
    print(f"ResNet-{depth}: export {exported:.1f} s, patterns {time.perf_counter() - start - exported:.2f} s")
    assert [st.count for st in s.stages] == list(counts)
    kind = "basic" if depth < 50 else "bottleneck"
    assert all(b.kind == kind for b in s.blocks)
    firsts = [s.blocks[st.blocks[0] - 1].shortcut for st in s.stages]
    assert firsts == (["identity"] if depth < 50 else ["projection"]) + ["projection"] * 3
    roles = [layer.role for layer in s.layers]
    assert roles[0] == "stem" and s.layers[0].rectified and roles[-1] == "head" and not s.layers[-1].rectified
    assert roles.count("shortcut") == (3 if depth < 50 else 4)
    assert roles.count("last") == sum(counts) and roles.count("first") == sum(counts)


def test_torchvision_resnet18_training_export(tmp_path):
    _check_torchvision(18, tmp_path, training=True)    # BatchNormalization kept in the graph


def test_torchvision_resnet50_eval_export(tmp_path):
    _check_torchvision(50, tmp_path, training=False)   # BatchNorm folded into the convs by the exporter


@pytest.mark.slow
def test_torchvision_resnet152(tmp_path):
    _check_torchvision(152, tmp_path, training=False)
