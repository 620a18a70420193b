"""Large models (issue 8) at a small size: external data in and out, the weights never held
in memory twice (lazy external data, new payloads spilled beside the output)."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxinit import autoinit

LAYERS, ROWS, COLS = 24, 1024, 2048   # 24 weights of 8 MB: 192 MB of external data

MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
BASELINE = """
import sys
import onnxinit.cli, onnxinit.api, onnxinit.propagate
from onnxinit.model_io import load_model
load_model(sys.argv[1], lazy=True)
"""


def _build(folder):
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(LAYERS):
        shape = (ROWS, COLS) if i % 2 == 0 else (COLS, ROWS)
        inits.append(numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", ROWS])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", ROWS])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "big.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data")
    return path


def _peak_mb(*command) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1]) / 1024


def test_external_data_in_and_out_without_holding_the_model(tmp_path):
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    path = _build(src_dir)
    before = {p.name: p.stat().st_mtime_ns for p in src_dir.iterdir()}
    out = out_dir / "init.onnx"
    base = _peak_mb(sys.executable, "-c", BASELINE, path)
    peak = _peak_mb(sys.executable, "-m", "onnxinit.cli", "autoinit", path, "-o", out, "--external-data", "-q")
    model_mb, largest_mb = LAYERS * ROWS * COLS * 4 / 2**20, ROWS * COLS * 4 / 2**20
    print(f"peak RSS {peak:.0f} MB; {base:.0f} MB to import and parse; model {model_mb:.0f} MB")
    # issue 8's bound; holding the weights twice (old and new) would need base + 2 * model_mb + the
    # fixed working set (~200 MB: weight samples drawn ahead, a 2048-wide layer's unit correlations)
    assert peak <= model_mb + largest_mb + 300
    assert sorted(p.name for p in out_dir.iterdir()) == ["init.onnx", "init.onnx.data"]   # no spill left
    assert {p.name: p.stat().st_mtime_ns for p in src_dir.iterdir()} == before           # input untouched
    new = onnx.load(str(out))
    eager = autoinit(path)   # the same weights as the in-memory path
    for a, b in zip(new.graph.initializer, eager.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": np.random.default_rng(1).standard_normal((8, ROWS), dtype=np.float32)})[0]
    assert np.isfinite(y).all()


def test_small_output_inlines_deferred_payloads(tmp_path):
    path = _build(tmp_path)
    out = tmp_path / "inline.onnx"
    r = subprocess.run([sys.executable, "-m", "onnxinit.cli", "autoinit", str(path), "-o", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == TensorProto.DEFAULT for t in model.graph.initializer)
    onnx.checker.check_model(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "inline.onnx"]


def test_over_the_threshold_output_goes_to_external_data_by_itself(tmp_path, monkeypatch):
    """Without --external-data a model whose payloads pass the 2 GB threshold (forced down to
    64 MB here) is written with its data beside it, and loads in ONNX Runtime."""
    from click.testing import CliRunner

    from onnxinit import model_io
    from onnxinit.cli import cli
    monkeypatch.setattr(model_io, "TWO_GB", 128 << 20)   # threshold: TWO_GB - 64 MB
    path = _build(tmp_path)
    out = tmp_path / "auto.onnx"
    result = CliRunner().invoke(cli, ["autoinit", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.onnx", "auto.onnx.data", "big.onnx", "big.onnx.data"]
    assert out.stat().st_size < 1 << 20
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": np.ones((2, ROWS), np.float32)})[0]
    assert np.isfinite(y).all()
