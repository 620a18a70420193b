"""Weight standardization in the graph (NFNets' ScaledStdConv2d) and a conv along the channels
(ECA): the weights are drawn through v and the gain, and the layers land in band."""
from pathlib import Path

import numpy as np
import onnx

import onnxinit
from onnxinit.graph import Graph
from onnxinit.measure import gaussian_feeds, measure
from onnxinit.rules import RuleTable
from onnxinit.untie import untie_uniform_weights
from onnxinit.weightstd import WeightStandardization

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "nfnet_eca.onnx"


def _standardized(model):
    graph = Graph(model)
    found = {}
    for node in graph.nodes:
        if node.op_type == "Conv":
            ws = graph.weight_norm(node.input[1])
            if isinstance(ws, WeightStandardization):
                found[node.name] = ws
    return graph, found


def test_standardized_weights_are_found_and_written_exactly():
    model = onnx.load(SAMPLE)
    untie_uniform_weights(model, RuleTable(()))
    graph, found = _standardized(model)
    assert len(found) == 10   # the stem and three convs in each of three blocks (not the ECA convs)
    rng = np.random.default_rng(0)
    for ws in found.values():
        w = rng.standard_normal(ws.shape)
        w = ws.center(w)     # what AutoInit draws: each unit's mean removed
        ws.write(graph, w)
        np.testing.assert_allclose(ws.evaluate(graph), w, rtol=1e-5, atol=1e-6)


def test_autoinit_draws_through_the_standardization():
    before = onnx.load(SAMPLE)
    model, report = onnxinit.autoinit(SAMPLE, seed=1, return_report=True)
    assert len(report.layers) == 14 and not report.fallbacks
    # the gains torch.onnx merged (all 1/sqrt(fan-in)) are one tensor per conv again
    assert len(report.structural_changes) == 3
    graph, found = _standardized(model)
    gains = [ws.g for ws in found.values()]
    assert len(set(gains)) == len(gains)
    old = {t.name: t.raw_data for t in before.graph.initializer}
    new = {t.name: t.raw_data for t in model.graph.initializer}
    assert all(new[ws.v] != old[ws.v] for ws in found.values())
    outputs = {n.name: n.output[0] for n in model.graph.node}
    feeds = gaussian_feeds(model, 256, np.random.default_rng(0))
    measured = measure(model, [outputs[r.node] for r in report.layers] + ["output"], feeds)
    for r in report.layers:
        mean, var = measured[outputs[r.node]]
        assert abs(mean) < 0.1 and 0.5 <= var <= 2.0, (r.node, mean, var)
        if r.node in found:   # within 15%: the ECA gates before some of them are off by up to 40%
            assert abs(r.output.var - var) <= 0.15 * var, (r.node, r.output.var, var)
    assert 0.1 <= measured["output"][1] <= 10


def test_other_schemes_keep_the_standardization_gain():
    """wninit resets normalization layers to scale 1: not the BatchNormalization that standardizes
    a weight (its scale is the conv's gain); its result matches the same network with plain weights."""
    model = onnxinit.wninit(SAMPLE, seed=0)
    graph, found = _standardized(model)
    for ws in found.values():
        w = ws.evaluate(graph)
        rows = w.reshape(w.shape[0], -1)
        assert np.all(np.linalg.norm(rows, axis=1) < 3), ws.output   # a gain reset to 1: norm sqrt(fan-in)
