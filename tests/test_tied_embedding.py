"""An embedding table reused by the output head (GPT-2's lm_head: logits = h @ wte^T).

One tensor cannot give both uses unit variance: drawn for the lookup (unit entries), the
head's logits have variance d_model (768 on GPT-2). The head wins, since its output is the
model's: the table is drawn with second moment 1/(d_model * E[h^2]) and everything after the
lookup is propagated again with that table. Built with onnx.helper as the torch exporter
writes a tied head (Transpose of the table, then MatMul), checked with ONNX Runtime.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.measure import gaussian_feeds, measure

VOCAB, TOKENS, WIDTH = 300, 10, 48


def tied_lm(normalized: bool) -> onnx.ModelProto:
    """ids -> wte lookup (+ position table) -> [LayerNorm] -> MLP -> [LayerNorm] -> h @ wte^T."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.02, n)
               for n, s in (("wte", (VOCAB, WIDTH)), ("wpe", (TOKENS, WIDTH)),
                            ("w1", (WIDTH, 2 * WIDTH)), ("w2", (2 * WIDTH, WIDTH)))]
    weights += [numpy_helper.from_array(np.arange(TOKENS, dtype=np.int64), "positions"),
                numpy_helper.from_array(np.ones(WIDTH, np.float32), "ln_scale")]
    norm = (lambda x, y: [helper.make_node("LayerNormalization", [x, "ln_scale"], [y], axis=-1)]) if normalized \
        else (lambda x, y: [helper.make_node("Identity", [x], [y])])
    nodes = [helper.make_node("Gather", ["wte", "ids"], ["tokens"]),
             helper.make_node("Gather", ["wpe", "positions"], ["pos"]),
             helper.make_node("Add", ["tokens", "pos"], ["h0"]),
             *norm("h0", "n0"),
             helper.make_node("MatMul", ["n0", "w1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["b"]),
             helper.make_node("Add", ["h0", "b"], ["h1"]),
             *norm("h1", "n1"),
             helper.make_node("Transpose", ["wte"], ["wte_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["n1", "wte_t"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tied_lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", TOKENS])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", TOKENS, VOCAB])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("normalized", [True, False])
def test_tied_head_gets_unit_variance(normalized):
    model, report = onnxinit.autoinit(tied_lm(normalized), seed=0, return_report=True)
    assert any("shared by an embedding lookup" in w for w in report.warnings), report.warnings
    # the position table gathered at constant ids is an embedding too (GPT-2's wpe was left as exported)
    assert sorted(e["table"] for e in report.extra["embeddings"]) == ["wpe", "wte"]
    names = ["tokens", "pos", "a", "b", "logits"]
    measured = measure(model, names, gaussian_feeds(model, 256, np.random.default_rng(1)))
    assert 0.8 <= measured["logits"][1] <= 1.25, measured
    for name in ("pos", "a", "b"):
        assert 0.8 <= measured[name][1] <= 1.25, (name, measured[name])
    # the lookup pays for it: about 1 / (WIDTH * E[h^2])
    assert measured["tokens"][1] < 0.2, measured
    predicted = report.output_moments["logits"].var
    assert abs(predicted / measured["logits"][1] - 1) < 0.1, (predicted, measured["logits"])
    # deterministic, like any other draw
    again = onnxinit.autoinit(tied_lm(normalized), seed=0)
    assert again.SerializeToString() == model.SerializeToString()


def test_untied_tables_keep_unit_lookups():
    """Without the tie the lookups are drawn as before (unit variance) and nothing is propagated twice."""
    model = tied_lm(True)
    rng = np.random.default_rng(3)
    model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32),
                                                           "head"))
    for node in model.graph.node:
        if node.op_type == "Transpose":
            node.input[0] = "head"
    out, report = onnxinit.autoinit(model, seed=0, return_report=True)
    assert not any("embedding lookup" in w for w in report.warnings), report.warnings
    measured = measure(out, ["tokens", "logits"], gaussian_feeds(out, 256, np.random.default_rng(1)))
    assert 0.8 <= measured["tokens"][1] <= 1.25 and 0.8 <= measured["logits"][1] <= 1.25, measured
