"""onnxinit nio on the command line: one scale per weight tensor, the report, the training graph."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from conftest import ALL_SAMPLES
from onnxinit.cli import cli

SAMPLE = {p.stem: p for p in ALL_SAMPLES}
pytestmark = pytest.mark.training


def test_cli_nio_scales_each_tensor_once(digits, tmp_path):
    out, report, graph = tmp_path / "nio.onnx", tmp_path / "nio.json", tmp_path / "train.onnx"
    result = CliRunner().invoke(cli, ["nio", str(SAMPLE["mlp_relu_deep"]), "--data", str(digits), "-o", str(out),
                                      "--input", "input=x", "--labels", "y", "--iters", "3",
                                      "--batch", "64", "--start", "keep", "--gamma", "auto", "--json", str(report),
                                      "--export-training-graph", str(graph)])
    assert result.exit_code == 0, result.output
    assert "GradCosine" in result.output and "coefficient per weight tensor" in result.output
    document = json.loads(report.read_text())
    assert document["schema"] == "onnxinit-nio" and document["coefficients"]
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(SAMPLE["mlp_relu_deep"])).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name, coefficient in document["coefficients"].items():
        np.testing.assert_allclose(after[name], before[name] * coefficient, rtol=1e-5, atol=1e-7)
    for name in set(before) - set(document["coefficients"]):
        np.testing.assert_array_equal(after[name], before[name])
    onnx.checker.check_model(onnx.load(str(graph)))


def test_cli_nio_bad_data(digits, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((8, 64), np.float32), y=np.full(8, 12))
    for args in [["--data", str(bad), "--input", "input=x", "--labels", "y"],   # labels out of range
                 ["--data", str(digits), "--labels", "nope"],                              # no such labels
                 ["--data", str(digits), "--input", "input=x", "--labels", "y", "--gamma", "-1"]]:
        out = tmp_path / "x.onnx"
        result = runner.invoke(cli, ["nio", str(SAMPLE["mlp_relu_deep"]), "-o", str(out), "--iters", "1", *args])
        assert result.exit_code == 2, (args, result.output)
        assert not out.exists()
