"""Weights in float16, bfloat16 and float64 are initialized in their own dtype; no float weights is an error."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.errors import OnnxInitError
from onnxinit.measure import gaussian_feeds, measure


def mlp(elem_type):
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 1, (16, 64)).astype(dtype), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 1, (64, 8)).astype(dtype), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem_type, ["N", 16])],
                              [helper.make_tensor_value_info("y", elem_type, ["N", 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE],
                         ids=["float16", "bfloat16", "float64"])
def test_own_dtype(elem_type):
    model, report = onnxinit.autoinit(mlp(elem_type), seed=1, return_report=True)
    onnx.checker.check_model(model)
    assert len(report.layers) == 2
    for t in model.graph.initializer:
        assert t.data_type == elem_type
        assert np.all(np.isfinite(numpy_helper.to_array(t).astype(np.float64)))
    if elem_type != TensorProto.BFLOAT16:  # ORT's CPU provider has no bfloat16 MatMul
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        measured = measure(model, ["h", "y"], gaussian_feeds(model, 4096, np.random.default_rng(0)))
        for name in ("h", "y"):
            assert 0.85 < measured[name][1] < 1.15, (name, measured[name])


@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE],
                         ids=["float16", "bfloat16", "float64"])
def test_classic_and_wninit_in_own_dtype(elem_type):
    """init's schemes and wninit draw in float64 and store in the weight's dtype (he-normal: std
    sqrt(2/fan_in) within sampling error; wninit: rows of norm g)."""
    from onnxinit.classic import init
    from onnxinit.wn_api import wninit
    model = init(mlp(elem_type), scheme="he-normal", seed=2)
    w1 = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    assert model.graph.initializer[0].data_type == elem_type
    assert abs(w1.std() / np.sqrt(2 / 16) - 1) < 0.1
    model = wninit(mlp(elem_type), seed=2)
    assert [t.data_type for t in model.graph.initializer] == [elem_type] * 2
    w1 = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)   # (in 16, out 64): gain sqrt(2*16/64)
    np.testing.assert_allclose(np.linalg.norm(w1, axis=0), np.sqrt(2 * 16 / 64), rtol=1e-2)


def test_no_float_weights_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxInitError, match="no float weights"):
        onnxinit.autoinit(model)
