"""wninit (issue 6): Arpit, Campos & Bengio's orthogonal + gain initialization on exported graphs."""
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ALL_SAMPLES
from onnxinit.errors import OnnxInitError
from onnxinit.graph import Graph
from onnxinit.patterns import find_structure
from onnxinit.wn_api import describe, wninit

SAMPLE = {p.stem: p for p in ALL_SAMPLES}
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


def initialized(name, **options):
    model, result = wninit(SAMPLE[name], return_report=True, **options)
    return model, result, {r.node: r for r in result.layers}


def effective_rows(model):
    """layer name -> its weight as the layer computes it, canonical (groups, rows, in*taps), float64."""
    graph = Graph(model)
    rows = {}
    for layer in find_structure(graph).layers:
        w = graph.constant_value(layer.weight) if layer.weight_norm is None else layer.weight_norm.evaluate(graph)
        out, fan, taps = layer.layout.canonical_shape
        groups = layer.layout.group_count
        canonical = layer.layout.to_canonical(np.asarray(w, np.float64))
        rows[layer.name] = canonical.reshape(groups, out // groups, fan * taps)
    return rows


def expected_gain(record, b_k=None, direction="forward"):
    """The formula, from the weight's own shape: fan_in = in*k*k, fan_out = out*k*k (per group)."""
    shape = record.shape
    if record.op_type == "Conv":
        fan_in, fan_out = shape[1] * math.prod(shape[2:]), shape[0] * math.prod(shape[2:])
    else:   # Gemm with transB=1, as PyTorch exports nn.Linear: (out, in)
        fan_in, fan_out = shape[1], shape[0]
    gamma = {"last": 1 / b_k if b_k else None, "shortcut": 1.0}.get(record.role, 2.0 if record.rectified else 1.0)
    return math.sqrt(gamma * fan_in / fan_out) if direction == "forward" else math.sqrt(gamma)


# --- the norm structure of every weight ------------------------------------------------
@pytest.mark.parametrize("name", ["resnet20_wn", "resnet56_nobn", "resnet_bottleneck", "mlp_wn", "resnet20_bn_train",
                                  "cnn_plain", "convnext_tiny"])
def test_rows_orthonormal_up_to_the_gain(name):
    model, result, records = initialized(name)
    for layer, w in effective_rows(model).items():
        g = records[layer].gain
        np.testing.assert_allclose(np.linalg.norm(w, axis=2), g, rtol=1e-5, err_msg=layer)
        _, rows, cols = w.shape
        if rows <= cols:
            gram = np.einsum("gij,gkj->gik", w, w)
            np.testing.assert_allclose(gram, np.broadcast_to(g * g * np.eye(rows), gram.shape), atol=1e-5 * g * g,
                                       err_msg=layer)
        else:   # more outputs than inputs: orthonormal columns, rows then scaled to unit norm (as weight norm does)
            assert np.linalg.matrix_rank(w[0]) == cols


def test_first_layers_gamma_2():
    _, result, _ = initialized("resnet20_wn")
    firsts = [r for r in result.layers if r.role == "first"]
    assert len(firsts) == 9 and all(r.gamma == 2 for r in firsts)
    for r in firsts:
        assert r.gain == pytest.approx(expected_gain(r), rel=1e-12)
    assert sorted({round(r.gain, 6) for r in firsts}) == [1.0, round(math.sqrt(2), 6)]   # 16->32 stride 2: 1


def test_middle_layers_gamma_2():
    """A bottleneck's middle layer is followed by a rectifier: gamma 2, g = sqrt(2 fan_in / fan_out)."""
    _, result, _ = initialized("resnet_bottleneck")
    middles = [r for r in result.layers if r.role == "middle"]
    assert len(middles) == 6 and all(r.gamma == 2 and r.rectified for r in middles)
    for r in middles:
        assert r.gain == pytest.approx(expected_gain(r), rel=1e-12)
    stems, heads = [r for r in result.layers if r.role == "stem"], [r for r in result.layers if r.role == "head"]
    assert [r.gamma for r in stems] == [2] and [r.gamma for r in heads] == [1]
    for r in stems + heads:
        assert r.gain == pytest.approx(expected_gain(r), rel=1e-12)


@pytest.mark.parametrize("name,b_k", [("resnet20_wn", 3), ("resnet56_nobn", 9), ("resnet_bottleneck", 2)])
def test_last_layers_gamma_one_over_blocks_in_stage(name, b_k):
    _, result, _ = initialized(name)
    lasts = [r for r in result.layers if r.role == "last"]
    assert len(lasts) == 3 * b_k and all(r.gamma == pytest.approx(1 / b_k) for r in lasts)
    for r in lasts:
        assert r.gain == pytest.approx(expected_gain(r, b_k), rel=1e-12)


def test_shortcut_gamma_1():
    _, result, _ = initialized("resnet_bottleneck")
    shortcuts = [r for r in result.layers if r.role == "shortcut"]
    assert len(shortcuts) == 3 and all(r.gamma == 1 for r in shortcuts)
    assert [r.gain for r in shortcuts] == pytest.approx([math.sqrt(16 / 64), math.sqrt(64 / 128), math.sqrt(128 / 256)])


def test_feed_forward_gamma_2_before_a_rectifier_else_1():
    _, result, _ = initialized("mlp_wn")
    assert [r.role for r in result.layers] == ["feed-forward"] * 8
    assert [float(r.gamma) for r in result.layers] == [2.0] * 7 + [1.0]
    assert [r.gain for r in result.layers] == pytest.approx(
        [math.sqrt(2 * 64 / 128)] + [math.sqrt(2)] * 6 + [math.sqrt(128 / 10)])
    _, result, records = initialized("resnet56_nobn")
    assert records["/stem/Conv"].gain == pytest.approx(math.sqrt(2 * 27 / 144))   # a ReLU follows the stem
    assert records["/fc/Gemm"].gain == pytest.approx(math.sqrt(64 / 10))           # the classifier: none


def test_weight_norm_g_is_the_gain_and_v_has_unit_rows():
    model, result, _ = initialized("resnet20_wn")
    tensors = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    for r in result.layers:
        v, g = tensors[r.weight_norm["v"]], tensors[r.weight_norm["g"]]
        np.testing.assert_allclose(g.reshape(-1), r.gain, rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(v.reshape(v.shape[0], -1), axis=1), 1.0, rtol=1e-6)
    assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)


def test_weight_norm_and_plain_networks_get_the_same_gains():
    _, wn, _ = initialized("resnet56_wn")
    _, plain, _ = initialized("resnet56_nobn")
    assert [(r.role, r.gamma, r.gain) for r in wn.layers] == [(r.role, r.gamma, r.gain) for r in plain.layers]


def test_backward_direction_gain_is_sqrt_gamma():
    _, result, _ = initialized("resnet20_wn", direction="backward")
    for r in result.layers:
        assert r.gain == pytest.approx(expected_gain(r, 3, "backward"), rel=1e-12)
    assert {round(r.gain, 6) for r in result.layers if r.role == "last"} == {round(math.sqrt(1 / 3), 6)}


# --- what else is written, and what is not ----------------------------------------------
def test_biases_zero_normalization_reset_structure_kept():
    source = onnx.load(SAMPLE["resnet_bottleneck"])
    model, result = wninit(source, return_report=True)
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.all(tensors["fc.bias"] == 0)
    for node in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        assert [float(np.unique(tensors[i])[0]) for i in node.input[1:5]] == [1.0, 0.0, 0.0, 1.0]
    assert [n.SerializeToString() for n in model.graph.node] == [n.SerializeToString() for n in source.graph.node]
    assert [(t.name, list(t.dims), t.data_type) for t in model.graph.initializer] == \
           [(t.name, list(t.dims), t.data_type) for t in source.graph.initializer]
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_float16_weights_stay_float16():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float16), "conv.w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float16), "conv.b"),
             numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float16), "fc.v"),
             numpy_helper.from_array(np.ones((10, 1), np.float16), "fc.g")]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("ReduceL2", ["fc.v"], ["n"], axes=[1], keepdims=1),
             helper.make_node("Div", ["fc.v", "n"], ["d"]), helper.make_node("Mul", ["d", "fc.g"], ["fc.w"]),
             helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 10])], inits)
    model, result = wninit(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), return_report=True)
    assert all(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert [r.gain for r in result.layers] == pytest.approx([math.sqrt(2 * 36 / 72), math.sqrt(8 / 10)])
    for layer, w in effective_rows(model).items():
        np.testing.assert_allclose(np.linalg.norm(w, axis=2), result.layers[layer == "fc"].gain, rtol=2e-3)
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float16)
    assert np.all(np.isfinite(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]))


def test_reproducible_with_provenance_and_input_untouched():
    path = SAMPLE["resnet20_wn"]
    before = path.read_bytes()
    a = wninit(path, seed=4).SerializeToString()
    assert a == wninit(path, seed=4).SerializeToString() != wninit(path, seed=5).SerializeToString()
    assert path.read_bytes() == before
    meta = {p.key: p.value for p in onnx.load_from_string(a).metadata_props}
    assert meta["onnxinit.command"] == "wninit" and meta["onnxinit.seed"] == "4"
    assert meta["onnxinit.direction"] == "forward" and "onnxinit.version" in meta


def test_bad_input():
    with pytest.raises(OnnxInitError, match="direction"):
        wninit(SAMPLE["mlp_wn"], direction="sideways")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(OnnxInitError, match="no weighted layer"):
        wninit(helper.make_model(graph))


# --- the printout the CLI shows ------------------------------------------------------------
def test_describe_names_stages_and_block_counts():
    _, result, _ = initialized("resnet56_wn")
    text = describe(result)
    assert "residual network: 27 blocks in 3 stages" in text
    for k in (1, 2, 3):
        assert f"stage {k}: 9 blocks (B = 9; basic;" in text
    assert "last γ = 1/9" in text and "first γ = 2" in text and "shortcut γ = 1" in text
    assert "58 (58 through weight norm" in text
    explained = describe(result, explain=True)
    assert len(explained.splitlines()) == len(text.splitlines()) + 58
    assert "/blocks/blocks.26/conv2/Conv (Conv 64x64x3x3), stage 3 block 27: last layer of a branch, stage 3 has " \
           "B = 9 blocks: γ = 1/9, g = √(1/9·576/576) = 0.3333" in explained
    data = json.loads(json.dumps(result.as_dict()))
    assert data["structure"] == "residual" and [s["blocks"] for s in data["stages"]] == [9, 9, 9]
    assert data["layers"][0]["weight_norm"]["v"].endswith("original1") and data["layers"][0]["gamma_text"] == "2"
    _, mlp, _ = initialized("mlp_wn")
    assert "no residual blocks found: feed-forward network" in describe(mlp)
    assert json.loads(mlp.to_json())["structure"] == "feed-forward"


# --- the signal in a network without normalization (ONNX Runtime) ----------------------------
def _export(model, path):
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.randn(2, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return onnx.load(path)


def _run(model, names, x):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"input": x})))


def _stage_ratios(model, x):
    """||f_k(x)|| / ||x|| per stage, norms per spatial position (sum over channels, mean over positions and
    samples): a stride-2 stage keeps a quarter of the positions, which a norm over the whole map would count."""
    s = find_structure(Graph(model))
    pairs = [(s.blocks[st.blocks[0] - 1].input, s.blocks[st.blocks[-1] - 1].output) for st in s.stages]
    out = _run(model, sorted({n for p in pairs for n in p}) + ["output"], x)
    energy = {n: float(np.mean(np.sum(np.asarray(v, np.float64) ** 2, axis=1))) for n, v in out.items() if v.ndim == 4}
    return [math.sqrt(energy[b] / energy[a]) for a, b in pairs], float(np.var(out["output"]))


def authors_resnet(n):
    """The authors' block without normalization: out = shortcut(x) + conv2(relu(conv1(x))), no ReLU after the
    sum, a 1x1 projection where shapes change, stem without ReLU (their WRN variant)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, stride, 1), nn.Conv2d(c_out, c_out, 3, 1, 1)
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

        def forward(self, x):
            return self.shortcut(x) + self.conv2(torch.relu(self.conv1(x)))

    blocks, c = [], 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            blocks.append(Block(c, width, 2 if stage > 0 and i == 0 else 1))
            c = width
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize("n", [3, 9])
def test_stage_norm_ratio_between_1_and_3(n, tmp_path):
    """The paper's claim: E||f_k(x)|| = c E||x|| with c in [√2, √e] per stage, for its blocks
    (no ReLU after the sum)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = wninit(_export(authors_resnet(n), tmp_path / "r.onnx"))
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    ratios, _ = _stage_ratios(model, x)
    print(f"ResNet-{6 * n + 2} (authors' blocks): per-stage norm ratio {[round(r, 3) for r in ratios]}")
    assert len(ratios) == 3 and all(1.0 <= r <= 3.0 for r in ratios), ratios
    # the post-activation samples (ReLU after every sum, outside the paper's analysis) stay near 1
    post, _ = _stage_ratios(wninit(SAMPLE["resnet56_nobn" if n == 9 else "resnet20_nobn"]), x)
    print(f"ResNet-{6 * n + 2} (ReLU after the sum): per-stage norm ratio {[round(r, 3) for r in post]}")
    assert all(0.7 <= r <= 3.0 for r in post), post


def test_152_layers_stay_finite_where_he_init_explodes(tmp_path):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(SAMPLES_DIR))
    from make_samples import CifarResNet   # noqa: E402 - the samples' own ResNet, 6n+2 layers, no normalization
    torch.manual_seed(0)
    net = CifarResNet(n=25)
    default = _export(net, tmp_path / "default.onnx")   # PyTorch's layer defaults
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):   # torchvision's ResNet init
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    he = _export(net, tmp_path / "he.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    models = {"PyTorch default": default, "He fan_out (torchvision)": he, "wninit": wninit(default)}
    figures = {label: float(np.var(_run(m, ["output"], x)["output"])) for label, m in models.items()}
    print("ResNet-152 (CIFAR, no normalization) output variance for N(0, 1) input: " +
          ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
    assert math.isfinite(figures["wninit"]) and 1e-2 <= figures["wninit"] <= 1e2
    assert figures["He fan_out (torchvision)"] > 1e6


def test_cli_wninit_prints_structure_and_writes_json(tmp_path):
    from click.testing import CliRunner

    from onnxinit.cli import cli
    samples = Path(__file__).resolve().parent.parent / "samples"
    out, report = tmp_path / "wn.onnx", tmp_path / "wn.json"
    result = CliRunner().invoke(cli, ["wninit", str(samples / "resnet20_wn.onnx"), "-o", str(out), "--json",
                                      str(report), "--explain"])
    assert result.exit_code == 0, result.output
    assert "9 blocks in 3 stages" in result.output and "stage 2: 3 blocks" in result.output
    assert json.loads(report.read_text())["structure"] == "residual"
    onnx.checker.check_model(onnx.load(str(out)))
    flat = CliRunner().invoke(cli, ["wninit", str(samples / "mlp_wn.onnx"), "-o", str(tmp_path / "mlp.onnx")])
    assert flat.exit_code == 0 and "feed-forward" in flat.output
    bad = CliRunner().invoke(cli, ["wninit", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 2 and not (tmp_path / "x.onnx").exists()
