"""--residual weighted: every residual sum of the no-BN ResNet measured at variance ~1 in ONNX Runtime."""
import numpy as np
import onnx
import pytest

import onnxinit
from conftest import ALL_SAMPLES, SAMPLES
from onnxinit.measure import gaussian_feeds, measure

RESNET = next(p for p in SAMPLES if p.stem == "resnet20_nobn")


@pytest.mark.parametrize("name", ["resnet20_nobn", "resnet20_wn"])   # _wn: folded through weight norms' g
def test_weighted_residual_sums_have_unit_variance(name):
    path = next(p for p in ALL_SAMPLES if p.stem == name)
    model, report = onnxinit.autoinit(path, seed=3, residual="weighted", return_report=True)
    onnx.checker.check_model(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert adds and len(report.structural_changes) >= 2 * len(adds)
    inserted = [n for n in model.graph.node if n.op_type == "Mul" and n.name.endswith("_onnxinit_residual_scaled_mul")]
    assert len(inserted) == sum("inserted Mul" in c for c in report.structural_changes)
    measured = measure(model, [a.output[0] for a in adds], gaussian_feeds(model, 128, np.random.default_rng(0)))
    for a in adds:
        mean, var = measured[a.output[0]]
        assert 0.8 <= var <= 1.25, (a.name, var)


def test_default_keeps_structure_and_variance_grows():
    model, report = onnxinit.autoinit(RESNET, seed=3, return_report=True)
    assert not report.structural_changes
    adds = [n.output[0] for n in model.graph.node if n.op_type == "Add"]
    measured = measure(model, adds, gaussian_feeds(model, 64, np.random.default_rng(0)))
    assert measured[adds[-1]][1] > 1.3  # a sum of independent branches, as in the reference
