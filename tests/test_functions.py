"""Function calls analysed through their bodies (onnxinit/functions.py): model-local functions
(the module's weights passed in as inputs) and standard ops without a rule that their schema
defines as a function (opset 23's Attention). The written model keeps the calls."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.inspect import inspect_model
from onnxinit.api import save_model
from onnxinit.measure import gaussian_feeds, measure

WIDTH = 32


def _weights(rng, names_shapes):
    return [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
            for name, shape in names_shapes]


def local_function_model(blocks: int = 2) -> onnx.ModelProto:
    """x -> Gemm -> [Block(x, w_a, w_b) = x + Relu(x @ w_a) @ w_b] x blocks -> Gemm, each Block a
    call of the model-local function ``pkg::Block`` (what export_modules_as_functions writes)."""
    rng = np.random.default_rng(0)
    body = [helper.make_node("MatMul", ["x", "wa"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "wb"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])]
    block = helper.make_function("pkg", "Block", ["x", "wa", "wb"], ["y"], body,
                                 [helper.make_opsetid("", 17)])
    inits = _weights(rng, [("w_in", (WIDTH, 16)), ("w_out", (10, WIDTH))])
    nodes = [helper.make_node("Gemm", ["input", "w_in"], ["t0"], name="stem", transB=1)]
    for i in range(blocks):
        inits += _weights(rng, [(f"block{i}.wa", (WIDTH, 2 * WIDTH)), (f"block{i}.wb", (2 * WIDTH, WIDTH))])
        nodes.append(helper.make_node("Block", [f"t{i}", f"block{i}.wa", f"block{i}.wb"], [f"t{i + 1}"],
                                      name=f"block{i}", domain="pkg"))
    nodes.append(helper.make_node("Gemm", [f"t{blocks}", "w_out"], ["logits"], name="head", transB=1))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, functions=[block], opset_imports=[helper.make_opsetid("", 17),
                                                                     helper.make_opsetid("pkg", 1)])


def attention_model() -> onnx.ModelProto:
    """Tokens (N, 16, 32) -> q, k, v projections -> opset 23 Attention (4 heads, causal, read
    as 3-D with q_num_heads / kv_num_heads) -> output projection."""
    rng = np.random.default_rng(1)
    inits = _weights(rng, [(f"w{n}", (WIDTH, WIDTH)) for n in "qkvo"])
    nodes = [helper.make_node("MatMul", ["tokens", f"w{n}"], [n], name=f"proj_{n}") for n in "qkv"]
    nodes += [helper.make_node("Attention", ["q", "k", "v"], ["a"], name="attention", is_causal=1,
                               q_num_heads=4, kv_num_heads=4),
              helper.make_node("MatMul", ["a", "wo"], ["out"], name="proj_o")]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("tokens", TensorProto.FLOAT,
                                                                            ["N", 16, WIDTH])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16, WIDTH])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _measured_ratios(model, report):
    """{layer: measured E[y^2] / predicted} with the calls opened for measuring (inspect does it)."""
    result = inspect_model(model, measure_signal=True, batch=1024)
    rows = {r.node: r for r in result.rows if r.weighted}
    assert set(rows) == {r.node for r in report.layers}
    return {name: (r.measured[1] + r.measured[0] ** 2) / (r.predicted.var + r.predicted.mean ** 2)
            for name, r in rows.items()}


def test_weights_passed_into_local_functions_are_drawn_and_the_calls_kept():
    """Before, the two calls went to the fallback (nothing could run them alone) and the four
    weights inside kept their values: 2 of 6 layers drawn."""
    model = local_function_model()
    new, report = onnxinit.autoinit(model, seed=0, return_report=True)
    assert len(report.layers) == 6 and not report.fallbacks, (report.layers, report.fallbacks)
    assert sorted(report.extra["opened"]) == ["local function pkg::Block"] * 2
    assert "analysed through their bodies: local function pkg::Block x2" in report.summary()
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in new.graph.initializer:
        assert not np.array_equal(numpy_helper.to_array(t), before[t.name]), t.name
    # the file keeps its structure: the same nodes, function and opsets
    assert [n.SerializeToString() for n in new.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert [f.SerializeToString() for f in new.functions] == [f.SerializeToString() for f in model.functions]
    assert list(new.opset_import) == list(model.opset_import)
    onnx.checker.check_model(new)
    ratios = _measured_ratios(new, report)
    assert all(abs(r - 1) < 0.1 for r in ratios.values()), ratios
    # the output, measured on the model as written
    out = measure(new, ["logits"], gaussian_feeds(new, 1024, np.random.default_rng(0)))["logits"]
    assert 0.8 < out[1] < 1.25, out


def test_opset_23_attention_is_analysed_through_its_schema_body(tmp_path):
    """No rule for Attention: its schema's body (scale, causal mask, softmax, P @ V) goes through
    the rules instead of a Monte Carlo run of the whole op; the output projection is predicted
    within 10% of ONNX Runtime and the saved model still holds one Attention node."""
    model = attention_model()
    onnx.checker.check_model(model)
    new, report = onnxinit.autoinit(model, seed=0, return_report=True)
    assert "Attention" in report.extra["opened"] and not report.fallbacks, report.fallbacks
    assert report.kinds_used.get("softmax") == 1
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in model.graph.node]
    path = tmp_path / "attention.onnx"
    save_model(new, path)
    ort.InferenceSession(str(path))
    ratios = _measured_ratios(new, report)
    assert abs(ratios["proj_o"] - 1) < 0.1, ratios


def test_integer_function_ops_stay_closed():
    """Range has a schema body too (a Loop): over int64 shape arithmetic it is left as it is, and
    so is an op with bool outputs; only ops that compute floats from floats are opened."""
    model = attention_model()
    graph = model.graph
    graph.node.insert(0, helper.make_node("Range", ["start", "limit", "delta"], ["positions"]))
    graph.node.insert(1, helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT))
    graph.node.insert(2, helper.make_node("GreaterOrEqual", ["positions_f", "half"], ["late"]))
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n)
                              for n, v in (("start", 0), ("limit", 16), ("delta", 1))])
    graph.initializer.append(numpy_helper.from_array(np.array(8.0, np.float32), "half"))
    graph.output.append(helper.make_tensor_value_info("late", TensorProto.BOOL, [16]))
    new, report = onnxinit.autoinit(model, seed=0, return_report=True)
    assert set(report.extra["opened"]) == {"Attention", "CastLike"}, report.extra["opened"]   # CastLike: in its body
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in model.graph.node]


def test_inspect_lists_the_layers_inside_local_functions(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(local_function_model(blocks=1), path)
    r = subprocess.run([sys.executable, "-m", "onnxinit.cli", "inspect", str(path), "--measure"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "/4 (measured)" in r.stdout, r.stdout   # stem, the block's two MatMuls, head (2 before)


@pytest.mark.training
def test_training_graph_of_a_model_with_local_functions_has_every_weight():
    """NIO and compare build a gradient graph: ONNX Runtime has no gradient for a function call,
    so the bodies are inlined there (before: 'The gradient builder has not been registered')."""
    from onnxinit.train.engine import GradientEngine
    from onnxinit.train.graph import build_training_graph
    model = local_function_model()
    training = build_training_graph(model)
    assert set(training.weights) == {t.name for t in model.graph.initializer}
    engine = GradientEngine(training)
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((8, 16)).astype(np.float32), training.labels: rng.integers(0, 10, 8)}
    loss, grads = engine.loss_and_grads({}, feeds)
    assert np.isfinite(loss) and all(np.any(g != 0) for g in grads.values())
