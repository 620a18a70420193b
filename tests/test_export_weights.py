"""export-weights: files PyTorch loads back into the modules that produced the samples."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from conftest import ALL_SAMPLES
from onnxinit import autoinit
from onnxinit.cli import cli
from onnxinit.export_weights import export_weights

SAMPLE = {p.stem: p for p in ALL_SAMPLES}
# samples exported in inference mode (training-mode exports run dropout / batch statistics)
EVAL_SAMPLES = ["mlp_relu_deep", "cnn_plain", "resnet20_nobn", "bert_tiny", "gpt_tiny", "convnext_tiny",
                "mbconv_se", "densenet_block"]


def _make_samples():
    path = Path(__file__).resolve().parent.parent / "samples" / "make_samples.py"
    spec = importlib.util.spec_from_file_location("make_samples", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_samples", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EVAL_SAMPLES)
def test_autoinit_weights_load_into_the_pytorch_module(name, tmp_path):
    """autoinit the sample, export by source names, load into a freshly built module: its outputs
    equal ONNX Runtime's on the autoinit model to 1e-4. Parameters the exporter merged into one
    initializer (equal LayerNorm weights, layer scales) are the only ones left to the module."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    samples = _make_samples()
    new = autoinit(SAMPLE[name], seed=1)
    entries = export_weights(new, tmp_path / "w.safetensors", names="source")
    builder, training = samples.SAMPLES[name]
    torch.manual_seed(123)
    module, shape, *vocab = builder()
    module.eval()
    missing, unexpected = module.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=False)
    assert not unexpected
    aliased = {e.source_name: e for e in entries}
    for key in missing:   # merged by the exporter into another tensor; the output check below covers them
        assert key not in aliased
        assert key.endswith((".weight", ".bias", ".gamma")), key
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab[0], (4, *shape)) if vocab else rng.standard_normal((4, *shape)).astype(np.float32)
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(ours - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_npz_by_onnx_name_round_trips(tmp_path):
    model = onnx.load(SAMPLE["bert_tiny"])
    out = tmp_path / "w.npz"
    result = CliRunner().invoke(cli, ["export-weights", str(SAMPLE["bert_tiny"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = np.load(out)
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    for t in floats:
        np.testing.assert_array_equal(data[t.name], numpy_helper.to_array(t))
    mapping = json.loads(str(data["__mapping__"]))
    by_name = {m["onnx_name"]: m for m in mapping}
    assert by_name["onnx::MatMul_177"]["source_name"] == "blocks.0.qkv.weight"
    assert by_name["onnx::MatMul_177"]["transpose"]
    assert len(mapping) == len(floats)


def test_safetensors_header_and_dtypes(tmp_path):
    from safetensors.numpy import load_file
    model = onnx.load(SAMPLE["cnn_plain"])
    for t in model.graph.initializer:   # float16 weights stay float16
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    export_weights(model, tmp_path / "w.safetensors")
    loaded = load_file(tmp_path / "w.safetensors")
    for t in model.graph.initializer:
        assert loaded[t.name].dtype == np.float16
        np.testing.assert_array_equal(loaded[t.name], numpy_helper.to_array(t))


def test_bad_output_paths(tmp_path):
    runner = CliRunner()
    for out in [tmp_path / "w.pt", tmp_path / "missing" / "w.npz"]:
        result = runner.invoke(cli, ["export-weights", str(SAMPLE["cnn_plain"]), "-o", str(out)])
        assert result.exit_code == 2 and result.output.startswith("error:")
        assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_readme_snippet(tmp_path, monkeypatch):
    """The README's load_state_dict snippet, run as written on the autoinit ResNet-20."""
    torch = pytest.importorskip("torch")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    marker = "<!-- tested by tests/test_export_weights.py::test_readme_snippet -->\n```python\n"
    snippet = readme.split(marker, 1)[1].split("```", 1)[0]
    samples = _make_samples()
    new = autoinit(SAMPLE["resnet20_nobn"], seed=2)
    monkeypatch.chdir(tmp_path)
    export_weights(new, tmp_path / "weights.safetensors", names="source")
    scope = {"MyNet": lambda: samples.SAMPLES["resnet20_nobn"][0]()[0]}
    exec(snippet, scope)
    assert scope["missing"] == [] and scope["unexpected"] == []
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours = scope["model"].eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours, session.run(None, {"input": x})[0], atol=1e-4, rtol=1e-4)
