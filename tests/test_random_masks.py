"""Random masks built inside the graph (timm's drop path in a training-mode export).

Mul(branch, Div(Cast(Less(RandomUniformLike(ConstantOfShape([batch, 1, 1])), keep)), keep))
depends on no graph input: neither signal nor constant, so the Mul used to fall back and
pass the branch's moments through (E[y^2] off by the factor 1/keep). The mask subgraph is now
sampled at the probe batch and meets the branch as an independent per-sample signal.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import Graph
from onnxinit.moments import Moments
from onnxinit.propagate import propagate
from onnxinit.rules import RuleTable

TOKENS, WIDTH, KEEP = 8, 16, 0.6


def drop_path_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array(KEEP, np.float32), "keep")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["branch"]),
             helper.make_node("Relu", ["branch"], ["act"]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "one", "one"], ["mask_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["mask_shape"], ["ones"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("RandomUniformLike", ["ones"], ["u"], seed=1.0),
             helper.make_node("Less", ["u", "keep"], ["kept"]),
             helper.make_node("Cast", ["kept"], ["kept_f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["kept_f", "keep"], ["mask"]),
             helper.make_node("Mul", ["act", "mask"], ["dropped"]),
             helper.make_node("Add", ["x", "dropped"], ["y"])]
    graph = helper.make_graph(nodes, "drop_path",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TOKENS, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", TOKENS, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_drop_path_mask_is_sampled_and_multiplies_the_branch():
    model = onnx.shape_inference.infer_shapes(drop_path_model())
    ctx = propagate(Graph(model), RuleTable(()), Moments(0.0, 1.0))
    assert not ctx.fallbacks, ctx.warnings
    assert ctx.kinds_used.get("random", 0) >= 4
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((20000, TOKENS, WIDTH)).astype(np.float32)
    out = session.run(["y"], {"x": x})[0].astype(np.float64)
    dropped = out - x
    for name, measured in (("dropped", dropped), ("y", out)):
        m = ctx.moments[name]
        assert abs(m.mean - measured.mean()) < 0.03, (name, m, measured.mean())
        assert abs(m.var / measured.var() - 1) < 0.04, (name, m, measured.var())
    # the mask is one value per sample: the part common to a sample's tokens and channels
    # (the mask times the branch's mean) is the predicted shared part
    common = dropped.mean(axis=(1, 2)).var()
    assert abs(ctx.moments["dropped"].shared / common - 1) < 0.1, (ctx.moments["dropped"], common)
