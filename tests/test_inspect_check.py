"""inspect and check: exit codes for pipelines, the JSON schema, the plot, external data."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from conftest import ALL_SAMPLES, SAMPLES
from onnxinit.api import autoinit, save_model
from onnxinit.errors import OnnxInitError
from onnxinit.inspect import inspect_model

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "report-schema.json").read_text())
RESNET = next(p for p in SAMPLES if p.stem == "resnet20_nobn")


def run(*args):
    return subprocess.run([sys.executable, "-m", "onnxinit.cli", *map(str, args)], capture_output=True, text=True)


def test_check_fails_on_default_init_and_passes_after_autoinit(tmp_path):
    report = tmp_path / "check.json"
    r = run("check", RESNET, "--json", report)
    assert r.returncode == 1, r.stderr
    assert "check failed" in r.stdout and "/blocks/blocks.8/conv2/Conv" in r.stdout
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["check"]["passed"] is False and data["check"]["offending"]
    fixed = tmp_path / "fixed.onnx"
    assert run("autoinit", RESNET, "-o", fixed, "--quiet").returncode == 0
    r = run("check", fixed, "--measure")
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    r = run("check", tmp_path / "missing.onnx")
    assert r.returncode == 2 and r.stderr.startswith("error:")
    r = run("check", fixed, "--min-var", "2", "--max-var", "1")
    assert r.returncode == 2


def test_inspect_measures_what_it_predicts_after_autoinit(sample, tmp_path):
    path = tmp_path / "init.onnx"
    save_model(autoinit(sample, seed=2), path)
    result = inspect_model(path, measure_signal=True, batch=256)
    jsonschema.validate(json.loads(result.report.to_json()), SCHEMA)
    weighted = [r for r in result.rows if r.weighted]
    assert weighted and result.summary_dict()["in_band"] == len(weighted)
    for r in weighted:
        assert abs(r.predicted.var - r.measured[1]) <= 0.1 * r.measured[1], (r.node, r.predicted, r.measured)


def test_inspect_cli_table_plot_and_json(tmp_path):
    plot, report = tmp_path / "v.png", tmp_path / "r.json"
    fixed = tmp_path / "fixed.onnx"
    save_model(autoinit(RESNET), fixed)
    r = run("inspect", fixed, "--measure", "--plot", plot, "--compare", RESNET, "--json", report, "--rows", "10")
    assert r.returncode == 0, r.stderr
    assert "weighted layers in [0.1, 10]: 22/22 (measured)" in r.stdout
    assert "rows without flags" in r.stdout  # the table was cut to 10 rows
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    jsonschema.validate(json.loads(report.read_text()), SCHEMA)
    r = run("inspect", fixed, "--all")
    assert r.returncode == 0 and "Relu" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx", "r.json", "v.png"]


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from onnxinit.plot import plot_variance
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = inspect_model(RESNET)
    with pytest.raises(OnnxInitError, match=r"onnxinit\[plot\]"):
        plot_variance([result], ["x"], tmp_path / "p.png")
    assert not list(tmp_path.iterdir())


def test_inspect_measures_a_model_with_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    save_model(autoinit(RESNET), path, external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    result = inspect_model(path, measure_signal=True, batch=8)
    assert all(np.isfinite(r.measured[1]) for r in result.rows)


def test_autoinit_json_follows_the_schema(tmp_path):
    report = tmp_path / "a.json"
    assert run("autoinit", RESNET, "-o", tmp_path / "o.onnx", "--json", report, "-q").returncode == 0
    jsonschema.validate(json.loads(report.read_text()), SCHEMA)


def test_measure_feeds_weights_without_changing_the_model():
    """measure() hands large weights to ONNX Runtime as arrays over the model's own bytes; the
    moments equal those of the model run whole with the tensors as outputs, and the model is
    byte for byte what it was (also when, as in old IR versions, weights are graph inputs too)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from onnxinit.measure import _mean_var, gaussian_feeds, measure, with_outputs
    path = next(p for p in ALL_SAMPLES if p.stem == "resnet20_nobn")
    for weights_as_inputs in (False, True):
        model = onnx.load(path)
        if weights_as_inputs:
            model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                     for t in model.graph.initializer)
        before = model.SerializeToString()
        names = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Relu", "Add")]
        feeds = gaussian_feeds(model, 4, np.random.default_rng(3))
        ours = measure(model, names, feeds)
        assert model.SerializeToString() == before
        session = ort.InferenceSession(with_outputs(model, names).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        whole = dict(zip(names, session.run(names, feeds)))
        for name in names:
            np.testing.assert_allclose(ours[name], _mean_var(whole[name]), rtol=1e-5, atol=1e-7, err_msg=name)


def _audio_conv(path):
    """A 1-D conv stack over a dynamic length "L" (raw audio): kernel 10 stride 5, then kernel 3
    stride 2, so 16 samples (the default size of a dynamic dim) are too short to run it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (8, 1, 10)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 1, (8, 8, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[5]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], strides=[2])]
    graph = helper.make_graph(nodes, "audio", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_dim_sets_a_dynamic_length_for_analysis_and_measuring(tmp_path):
    """--dim NAME=SIZE sizes a symbolic input dim: without it, measuring feeds 16 samples, ONNX
    Runtime refuses, and the error says which dims to size; with it the model runs, is in band
    and the JSON report records the size. A name no input has, or a bad size, exits 2."""
    model, out, report = _audio_conv(tmp_path / "audio.onnx"), tmp_path / "out.onnx", tmp_path / "r.json"
    r = run("inspect", model, "--measure")
    assert r.returncode == 2 and "--dim" in r.stderr and "L" in r.stderr, r.stderr
    r = run("autoinit", model, "-o", out, "--dim", "L=400")
    assert r.returncode == 0 and "dynamic input dims taken as L=400" in r.stdout, r.stdout + r.stderr
    assert "dynamic input dims taken as L=16" in run("inspect", out).stdout
    r = run("check", out, "--measure", "--dim", "L=400", "--min-var", "0.8", "--max-var", "1.25", "--json", report)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["options"]["dims"] == {"L": 400}
    r = run("inspect", out, "--dim", "T=4")
    assert r.returncode == 2 and "symbolic dims: L" in r.stderr, r.stderr
    assert run("inspect", out, "--dim", "L=0").returncode == 2
