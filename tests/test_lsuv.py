"""LSUV: every weighted layer's output variance on the data batch ends within tol of 1."""
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import ALL_SAMPLES
from onnxinit.cli import cli
from onnxinit.graph import Graph
from onnxinit.layers import weighted_layers
from onnxinit.lsuv import lsuv
from onnxinit.measure import with_outputs
from onnxinit.rules import RuleTable

SAMPLE = {p.stem: p for p in ALL_SAMPLES}


def _data(tmp_path, name):
    rng = np.random.default_rng(7)
    if name == "bert_tiny":
        x = rng.integers(0, 1000, (128, 16))
    elif name in ("mlp_relu_deep", "mlp_wn"):
        x = (rng.standard_normal((128, 64)) * 2 + 0.5).astype(np.float32)
    else:   # shifted, scaled images: LSUV must not assume N(0, 1) input
        x = (rng.standard_normal((128, 3, 32, 32)) * 3 + 1).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, images=x, labels=rng.integers(0, 10, len(x)))
    return path, x


@pytest.mark.parametrize("name", ["mlp_relu_deep", "resnet20_nobn", "resnet20_bn_train", "bert_tiny",
                                  "mlp_wn", "resnet20_wn"])
def test_every_layer_ends_at_unit_variance(name, tmp_path):
    """Weight-normalized layers (w = g v / ||v||) are rescaled through their g."""
    path, x = _data(tmp_path, name)
    model, report = lsuv(SAMPLE[name], path, input_map={"input": "images"}, batch=128, return_report=True)
    layers = weighted_layers(Graph(model), RuleTable())
    names = [layer.node.output[0] for layer in layers]
    session = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {"input": x})
    for layer, value in zip(layers, values):
        assert abs(np.var(value.astype(np.float64)) - 1) < 0.1, layer.name
    assert all(r["tries"] <= 10 for r in report.extra["lsuv"])
    assert len(report.extra["lsuv"]) == len(layers)


def test_cli_lsuv_and_bad_data(tmp_path):
    path, _ = _data(tmp_path, "cnn_plain")
    out = tmp_path / "out.onnx"
    runner = CliRunner()
    ok = runner.invoke(cli, ["lsuv", str(SAMPLE["cnn_plain"]), "--data", str(path), "--input", "input=images",
                             "-o", str(out), "--batch", "32"])
    assert ok.exit_code == 0, ok.output
    assert "reached variance 1" in ok.output and out.exists()
    bad = tmp_path / "nan.npz"
    np.savez(bad, images=np.full((4, 3, 32, 32), np.nan, np.float32))
    empty, constant = tmp_path / "empty.npz", tmp_path / "constant.npz"
    np.savez(empty, images=np.zeros((0, 3, 32, 32), np.float32))
    np.savez(constant, images=np.zeros((4, 3, 32, 32), np.float32))
    for args in [["--data", str(bad), "--input", "input=images"],          # NaN
                 ["--data", str(path)],                                     # no array named 'input'
                 ["--data", str(path), "--input", "nope=images"],          # not an input of the model
                 ["--data", str(path), "--input", "input"],                # not NAME=KEY
                 ["--data", str(empty), "--input", "input=images"],        # no rows
                 ["--data", str(constant), "--input", "input=images"]]:    # no variance to measure
        out2 = tmp_path / "bad.onnx"
        result = runner.invoke(cli, ["lsuv", str(SAMPLE["cnn_plain"]), "-o", str(out2), *args])
        assert result.exit_code == 2, (args, result.output)
        assert not out2.exists()
