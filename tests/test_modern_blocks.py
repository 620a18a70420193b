"""ConvNeXt, MBConv with squeeze-excite, DenseNet, BERT- and GPT-style exports: the issue-3 targets.

Every op has a rule, the result runs in ONNX Runtime with
finite outputs, every weighted layer measures a variance in [0.5, 2], and the model
output's variance is in [0.1, 10].
"""
import numpy as np
import onnx
import pytest

import onnxinit
from conftest import ALL_SAMPLES, MODERN
from onnxinit.measure import gaussian_feeds, measure

MODERN_SAMPLES = [p for p in ALL_SAMPLES if p.stem in MODERN]


@pytest.mark.parametrize("path", MODERN_SAMPLES, ids=lambda p: p.stem)
def test_modern_block_in_band(path):
    model, report = onnxinit.autoinit(path, seed=1, return_report=True)
    onnx.checker.check_model(model)
    assert not report.fallbacks, report.warnings
    outputs = {n.name: n.output[0] for n in model.graph.node}
    names = [outputs[r.node] for r in report.layers]
    result = model.graph.output[0].name
    measured = measure(model, names + [result], gaussian_feeds(model, 128, np.random.default_rng(0)))
    in_band = sum(0.5 <= measured[n][1] <= 2 for n in names)
    assert in_band == len(names), [(n, measured[n][1]) for n in names]
    assert np.isfinite(measured[result][1]) and 0.1 <= measured[result][1] <= 10


def test_split_attention_gate_and_split_sum_are_predicted():
    """ResNeSt: a (N, 2, C, 1, 1) gate times the (N, 2, C, H, W) splits keeps the splits'
    positions (a length-1 axis broadcasts, it does not pool the map to its corner), and the sum
    over the splits (ReduceSum over axis 1) has a rule, no Monte Carlo."""
    from onnxinit.inspect import inspect_model
    path = next(p for p in ALL_SAMPLES if p.stem == "split_attention")
    model, report = onnxinit.autoinit(path, seed=0, return_report=True)
    assert not report.fallbacks and report.kinds_used.get("reduce", 0) == 3
    rows = {r.op_type + r.node: r for r in inspect_model(model, measure_signal=True, batch=256, all_tensors=True).rows}
    for key in ("Mul/2/Mul", "ReduceSum/2/ReduceSum", "ReduceSum/2/ReduceSum_1"):
        r = rows[key]
        assert abs(r.predicted.mean - r.measured[0]) <= 0.02, (key, r.predicted, r.measured)
        assert abs(r.predicted.var - r.measured[1]) <= 0.1 * r.measured[1], (key, r.predicted, r.measured)
