"""Classic schemes (onnxinit init): per-layer statistics against their formulas and against
PyTorch's own construction (the samples were exported with PyTorch's default init)."""
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from conftest import ALL_SAMPLES
from onnxinit.classic import init
from onnxinit.cli import cli
from onnxinit.graph import Graph
from onnxinit.layers import weighted_layers
from onnxinit.rules import RuleTable
from onnxinit.schemes.classic import SCHEMES

SAMPLE = {p.stem: p for p in ALL_SAMPLES}
FLAT_SCHEMES = [s for s in SCHEMES if s != "orthogonal"]


def _values(model):
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _tolerance(n: int) -> float:
    """2%, or four standard errors of a sample std from n draws when that is wider."""
    return max(0.02, 4.0 / math.sqrt(2.0 * n))


@pytest.mark.parametrize("scheme", FLAT_SCHEMES)
@pytest.mark.parametrize("name", ["resnet20_nobn", "mlp_relu_deep", "bert_tiny", "mbconv_se"])
def test_weight_std_matches_formula(scheme, name):
    model, report = init(SAMPLE[name], scheme=scheme, seed=3, return_report=True)
    values = _values(model)
    draws = [d for d in report.extra["draws"] if d["role"] in ("weight", "bias") and d["distribution"] != "constant"]
    assert draws
    for d in draws:
        w = values[d["tensor"]]
        assert abs(w.std() / d["std"] - 1) < _tolerance(w.size), (d, w.std())
        if d["distribution"] == "uniform":
            assert np.abs(w).max() <= math.sqrt(3) * d["std"] * (1 + 1e-6)
    for d in report.extra["draws"]:
        if d["role"] == "bias" and scheme != "torch-default":
            assert not values[d["tensor"]].any()


def test_formulas_by_scheme():
    """The std each scheme asks for, from its fans and gain, on one 3x3 conv of ResNet-20."""
    for scheme, expected in [("he-normal", lambda i, o: math.sqrt(2 / i)),
                             ("he-uniform", lambda i, o: math.sqrt(2 / i)),
                             ("glorot-normal", lambda i, o: math.sqrt(2 / (i + o))),
                             ("glorot-uniform", lambda i, o: math.sqrt(2 / (i + o))),
                             ("lecun-normal", lambda i, o: math.sqrt(1 / i)),
                             ("torch-default", lambda i, o: 1 / math.sqrt(3 * i))]:
        _, report = init(SAMPLE["resnet20_nobn"], scheme=scheme, return_report=True)
        conv = next(d for d in report.extra["draws"] if d["tensor"] == "blocks.3.conv1.weight")
        assert (conv["fan_in"], conv["fan_out"]) == (16 * 9, 32 * 9)
        assert conv["std"] == pytest.approx(expected(conv["fan_in"], conv["fan_out"]))


@pytest.mark.parametrize("name", ["resnet20_nobn", "mlp_relu_deep", "bert_tiny", "convnext_tiny", "mbconv_se"])
def test_orthogonal_rows(name):
    model, report = init(SAMPLE[name], scheme="orthogonal", seed=1, return_report=True)
    graph = Graph(model)
    layers = {layer.weight: layer for layer in weighted_layers(graph, RuleTable())}
    for d in report.extra["draws"]:
        if d["role"] != "weight":
            continue
        layer = layers[d["tensor"]]
        w = graph.constant_value(d["tensor"]).astype(np.float64)
        if layer.layout.kind in ("conv", "conv_transpose"):
            flat = w.reshape(w.shape[0], -1)
        else:
            flat = layer.layout.to_canonical(w).reshape(layer.layout.canonical_shape[0], -1)
        gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        assert np.abs(gram - np.eye(len(gram))).max() < 1e-5


def test_fans_follow_torch():
    torch = pytest.importorskip("torch")
    for path in ALL_SAMPLES:
        for layer in weighted_layers(Graph(onnx.load(path)), RuleTable()):
            expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(layer.torch_shape))
            assert layer.torch_fans == expected, (path.stem, layer.weight)


@pytest.mark.parametrize("name", ["mlp_relu_deep", "cnn_plain", "resnet20_nobn", "resnet20_bn_train", "bert_tiny",
                                  "mbconv_se"])
def test_torch_default_matches_pytorch_construction(name):
    """The samples carry PyTorch's construction draws: U(-b, b) for every Linear/Conv weight and
    bias (their largest |value| sits at the bound), ones and zeros for normalization layers. Ours
    must have the same bound per tensor, and the same spread."""
    original = _values(onnx.load(SAMPLE[name]))
    model, report = init(SAMPLE[name], scheme="torch-default", seed=5, return_report=True)
    ours = _values(model)
    checked = 0
    for d in report.extra["draws"]:
        theirs, mine = original[d["tensor"]], ours[d["tensor"]]
        if d["distribution"] == "uniform":
            bound = math.sqrt(3) * d["std"]
            assert np.abs(theirs).max() <= bound * (1 + 1e-5), d
            if theirs.size >= 200:
                assert np.abs(theirs).max() > bound * (1 - 10 / theirs.size), d
                assert abs(mine.std() / theirs.std() - 1) < 2 * _tolerance(theirs.size), d
            checked += 1
        elif d["role"] in ("scale", "shift"):
            np.testing.assert_array_equal(mine, theirs)
        elif d["role"] in ("running_mean", "running_var"):   # the export's forward pass moved theirs
            np.testing.assert_array_equal(mine, float(d["role"] == "running_var"))
    assert checked >= 4


def _torch_module(torch, layer):
    """The PyTorch layer that would hold this weight, constructed (so reset_parameters ran)."""
    shape = layer.torch_shape
    if layer.layout.kind == "conv":
        groups = layer.layout.group_count
        conv = {3: torch.nn.Conv1d, 4: torch.nn.Conv2d, 5: torch.nn.Conv3d}[len(shape)]
        return conv(shape[1] * groups, shape[0], tuple(shape[2:]), groups=groups)
    return torch.nn.Linear(shape[1], shape[0])


@pytest.mark.parametrize("name", ["mlp_relu_deep", "cnn_plain", "resnet20_nobn", "mbconv_se"])
def test_torch_default_matches_torch_modules(name):
    """torch as the oracle: modules of each layer's type and shape, constructed by PyTorch
    (pooled over constructions to at least 20k values), have the std and bound our
    torch-default draws use, weights within 2%, biases within 2% or four standard errors."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model, report = init(SAMPLE[name], scheme="torch-default", seed=5, return_report=True)
    draws = {d["tensor"]: d for d in report.extra["draws"]}
    layers = [la for la in weighted_layers(Graph(model), RuleTable()) if la.layout.kind in ("conv", "gemm", "matmul")]
    assert len(layers) >= 4
    for layer in layers:
        module = _torch_module(torch, layer)
        repeats = max(1, -(-20000 // module.weight.numel()))
        weights, biases = [], []
        for _ in range(min(repeats, 200)):
            module.reset_parameters()
            weights.append(module.weight.detach().numpy().ravel().copy())   # numpy() shares the storage
            biases.append(module.bias.detach().numpy().ravel().copy())
        for tensor, pooled in [(layer.weight, np.concatenate(weights)), (layer.bias, np.concatenate(biases))]:
            if tensor is None or tensor not in draws:
                continue
            d = draws[tensor]
            assert d["distribution"] == "uniform", d
            tolerance = max(0.02, 4.0 / math.sqrt(2.0 * pooled.size))
            assert abs(pooled.std() / d["std"] - 1) < tolerance, (d, pooled.std())
            assert np.abs(pooled).max() <= math.sqrt(3) * d["std"] * (1 + 1e-6), d


def _chain_model():
    """Gemm -> Tanh -> Gemm -> LeakyRelu(0.2) -> Gemm -> Relu -> Gemm."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, act in enumerate(["Tanh", "LeakyRelu", "Relu", None]):
        w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"g{i}"], transB=1))
        x = f"g{i}"
        if act:
            kw = {"alpha": 0.2} if act == "LeakyRelu" else {}
            nodes.append(helper.make_node(act, [x], [f"a{i}"], **kw))
            x = f"a{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, ["n", 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gain_auto_follows_the_nonlinearity():
    _, report = init(_chain_model(), scheme="he-normal", gain="auto", return_report=True)
    gains = [d["gain"] for d in report.extra["draws"] if d["role"] == "weight"]
    assert gains == pytest.approx([5 / 3, math.sqrt(2 / 1.04), math.sqrt(2), 1.0])
    _, report = init(_chain_model(), scheme="he-normal", return_report=True)
    assert all(d["gain"] == pytest.approx(math.sqrt(2)) for d in report.extra["draws"] if d["role"] == "weight")


def test_cli_init_writes_a_valid_deterministic_model(tmp_path):
    runner = CliRunner()
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.onnx"
        result = runner.invoke(cli, ["init", str(SAMPLE["resnet20_bn_train"]), "-o", str(out),
                                     "--scheme", "torch-default", "--seed", "4", "--json", str(tmp_path / "r.json")])
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    model = onnx.load_from_string(outs[0])
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxinit.command"] == "init" and meta["onnxinit.scheme"] == "torch-default"
    assert "predicted output variance" in result.output
    other = runner.invoke(cli, ["init", str(SAMPLE["resnet20_bn_train"]), "-o", str(tmp_path / "o.onnx"),
                                "--scheme", "torch-default", "--seed", "5", "-q"])
    assert other.exit_code == 0 and (tmp_path / "o.onnx").read_bytes() != outs[0]


def test_cli_init_bad_input(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = runner.invoke(cli, ["init", str(bad), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and not (tmp_path / "out.onnx").exists()
    result = runner.invoke(cli, ["init", str(SAMPLE["cnn_plain"]), "-o", str(tmp_path / "out.onnx"),
                                 "--scheme", "kaiming"])
    assert result.exit_code == 2
