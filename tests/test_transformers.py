"""A BERT-style export with token ids: every op has a rule, the result runs, the first block is predicted."""
import json

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort

import onnxinit
from conftest import ALL_SAMPLES
from onnxinit.measure import gaussian_feeds, measure

BERT = next(p for p in ALL_SAMPLES if p.stem == "bert_tiny")


def test_bert_autoinit_rules_every_op_and_runs():
    model, report = onnxinit.autoinit(BERT, seed=1, return_report=True)
    onnx.checker.check_model(model)
    assert not report.fallbacks or set(report.fallbacks) == {"Softmax"}, report.fallbacks
    assert {"gather", "layernorm", "split"} <= set(report.kinds_used)
    assert [e["table"] for e in report.extra["embeddings"]] == ["tok.weight"]
    assert "embedding tables initialized: 1" in report.summary()
    schema = json.loads((BERT.parent.parent / "docs" / "report-schema.json").read_text())
    jsonschema.validate(json.loads(report.to_json()), schema)
    table = next(t for t in model.graph.initializer if t.name == "tok.weight")
    rows = onnx.numpy_helper.to_array(table).astype(np.float64)
    assert np.abs(rows.mean(axis=0)).max() < 1e-5 and abs(np.mean(rows ** 2) - 1) < 1e-3
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = gaussian_feeds(model, 64, np.random.default_rng(0))
    assert feeds["input"].dtype == np.int64 and feeds["input"].max() < 1000
    out = session.run(None, feeds)[0]
    assert np.all(np.isfinite(out)) and 0.1 < out.var() < 10


def test_bert_first_block_predicted():
    """Embeddings, LayerNorm, the first attention block and its MLP within 10% of ONNX Runtime.

    Known gap: the second block's attention output is under-predicted (tokens
    mixed by the first attention are correlated across positions, which the
    product rule for MatMul between activations does not follow)."""
    model, report = onnxinit.autoinit(BERT, seed=1, return_report=True)
    outputs = {n.name: n.output[0] for n in model.graph.node}
    first = report.layers[:4]   # qkv, proj, fc1, fc2 of the first block
    measured = measure(model, [outputs[r.node] for r in first], gaussian_feeds(model, 256, np.random.default_rng(0)))
    for r in first:
        mean, var = measured[outputs[r.node]]
        assert abs(r.output.var - var) <= 0.1 * var, (r.node, r.output.var, var)
