"""AutoInit on the real sample exports, checked with ONNX Runtime."""
import numpy as np
import onnx
import onnxruntime as ort

import onnxinit
from onnxinit.measure import gaussian_feeds, measure


def test_output_valid_and_layers_normalized(sample):
    model, report = onnxinit.autoinit(sample, seed=3, return_report=True)
    onnx.checker.check_model(model)
    assert report.layers, "no weighted layer found"
    outputs = {n.name: n.output[0] for n in model.graph.node}
    feeds = gaussian_feeds(model, 32, np.random.default_rng(0))
    measured = measure(model, [outputs[r.node] for r in report.layers] + [model.graph.output[0].name], feeds)
    for r in report.layers:
        mean, var = measured[outputs[r.node]]
        assert abs(mean) < 0.1, (r.node, mean)
        assert 0.5 < var < 2.0, (r.node, var)
        # predicted E[y^2] is 1 by construction; depthwise layers cannot be mean-centered
        assert abs(r.output.var + r.output.mean ** 2 - 1.0) < 1e-3 and abs(r.output.mean) < 0.05
    assert np.isfinite(measured[model.graph.output[0].name][1])


def test_same_seed_same_bytes(sample):
    a = onnxinit.autoinit(sample, seed=7).SerializeToString()
    b = onnxinit.autoinit(sample, seed=7).SerializeToString()
    c = onnxinit.autoinit(sample, seed=8).SerializeToString()
    assert a == b and a != c


def test_input_untouched_and_structure_kept(sample):
    before = sample.read_bytes()
    original = onnx.load(sample)
    new = onnxinit.autoinit(sample)
    assert sample.read_bytes() == before
    assert [n.SerializeToString() for n in new.graph.node] == [n.SerializeToString() for n in original.graph.node]
    assert [(t.name, list(t.dims), t.data_type) for t in new.graph.initializer] == \
           [(t.name, list(t.dims), t.data_type) for t in original.graph.initializer]
    ort.InferenceSession(new.SerializeToString())
