"""Ops without a rule: Monte Carlo with ONNX Runtime (contrib ops too), or a warning and pass-through."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.graph import Graph
from onnxinit.moments import Moments
from onnxinit.propagate import propagate
from onnxinit.rules import RuleTable
from test_rule_kinds_mc import measured


def model_with(node, shape, opsets=(("", 17),), inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(shape[1:]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(v, n) for n, v in inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    return onnx.shape_inference.infer_shapes(m)


def test_monte_carlo_matches_onnxruntime_for_ops_without_rules():
    cases = [
        (helper.make_node("Softmax", ["x"], ["y"], axis=-1), (1, 4, 10), (("", 17),)),
        (helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1), (1, 6, 5), (("", 17),)),
        (helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft"), (1, 16),
         (("", 17), ("com.microsoft", 1))),
    ]
    for node, shape, opsets in cases:
        model = model_with(node, shape, opsets)
        for mean, var in ((0.0, 1.0), (0.5, 2.0)):
            ctx = propagate(Graph(model), RuleTable(()), Moments(mean, var))
            assert ctx.fallbacks and "Monte Carlo with onnxruntime" in ctx.warnings[0], ctx.warnings
            p = ctx.moments["y"]
            m, v = measured(model, shape, mean, var)
            assert abs(p.var - v) <= 0.06 * v and abs(p.mean - m) <= 0.06 * np.sqrt(v) + 1e-6, (node.op_type, p, m, v)


def test_unknown_custom_op_is_passed_through_with_a_warning():
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MysteryOp", ["x"], ["h"], domain="acme.custom"),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.custom", 1)])
    new, report = onnxinit.autoinit(model, return_report=True)
    assert report.fallbacks == {"acme.custom::MysteryOp": 1}
    assert any("passed through" in w for w in report.warnings)
    assert len(report.layers) == 1 and "MysteryOp" in report.summary()
