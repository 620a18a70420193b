"""The numpy fast path for common elementwise ops against ONNX Runtime's own kernels."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxinit.numeric_ops import evaluate

X = np.random.default_rng(0).normal(0, 3, 2000)

UNARY = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 2.0}),
         ("ThresholdedRelu", {"alpha": 0.3}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
         ("HardSwish", {}), ("Tanh", {}), ("Softplus", {}), ("Softsign", {}), ("Erf", {}), ("Exp", {}),
         ("Neg", {}), ("Abs", {}), ("Sin", {}), ("Cos", {}), ("Mish", {}), ("Gelu", {}),
         ("Gelu", {"approximate": "tanh"})]


def ort_unary(op, attrs, x, opset):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x.astype(np.float32)})[0]


@pytest.mark.parametrize("op,attrs", UNARY, ids=[f"{o}{a.get('approximate', '')}" for o, a in UNARY])
def test_unary_matches_onnxruntime(op, attrs):
    opset = 22 if op in ("Mish", "Gelu") else 17
    x = X.astype(np.float32).astype(np.float64)
    ours = evaluate(helper.make_node(op, ["x"], ["y"], **attrs), [x], {"": opset})
    theirs = ort_unary(op, attrs, x, opset)
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)
