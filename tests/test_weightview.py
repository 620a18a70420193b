"""Weights reaching their layer through Cast / Reshape / Transpose / Identity (weightview.py)."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.graph import Graph
from onnxinit.measure import gaussian_feeds, measure


def _model():
    """x (N, 6) @ Transpose(Reshape(Cast(W16 (4, 3, 2) -> float), (4, 6))) -> Relu -> Gemm(transB) via Identity."""
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array(rng.standard_normal((4, 3, 2)).astype(np.float16), "w16")
    shape = numpy_helper.from_array(np.array([4, 6], np.int64), "shape")
    head = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "head")
    nodes = [
        helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["w32", "shape"], ["w2d"]),
        helper.make_node("Transpose", ["w2d"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Identity", ["head"], ["head_shared"]),
        helper.make_node("Gemm", ["r", "head_shared"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [w16, shape, head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _run(model, names):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"x": np.zeros((1, 6), np.float32)})))


def test_view_reads_and_writes_what_the_layer_multiplies():
    model = _model()
    graph = Graph(model)
    view = graph.weight_view("wt")
    assert view is not None and view.source == "w16" and view.shape == (6, 4) and view.dtype == np.float32
    assert graph.is_weight("wt") and graph.payload_names("wt") == ["w16"]
    np.testing.assert_array_equal(view.evaluate(graph), _run(model, ["wt"])["wt"])
    new = np.arange(24, dtype=np.float32).reshape(6, 4) / 8   # exact in float16
    graph.replace_payload("wt", new)
    np.testing.assert_array_equal(_run(model, ["wt"])["wt"], new)
    assert [t.data_type for t in model.graph.initializer if t.name == "w16"] == [TensorProto.FLOAT16]


def test_a_runtime_shape_is_not_a_view():
    model = _model()
    node = next(n for n in model.graph.node if n.op_type == "Reshape")
    node.input[1] = "runtime_shape"
    model.graph.node.insert(0, helper.make_node("Shape", ["x"], ["runtime_shape"]))
    assert Graph(model).weight_view("wt") is None


def test_autoinit_initializes_both_layers_through_their_views():
    model, report = onnxinit.autoinit(_model(), seed=3, return_report=True)
    assert [r.weight for r in report.layers] == ["wt", "head_shared"]
    measured = measure(model, ["h", "y"], gaussian_feeds(model, 4096, np.random.default_rng(0)))
    for name in ("h", "y"):
        mean, var = measured[name]
        assert abs(mean) < 0.1 and 0.85 <= var <= 1.15, (name, mean, var)


def _gathered_model():
    """x (N, 6) @ Concat(Slice(a, rows 2:4), Slice(a, rows 0:2), b)^T: a weight assembled from
    pieces of two tensors, rows reordered (as torch's dynamo exporter feeds an LSTM its gates)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32) * 3, "a"),
             numpy_helper.from_array(rng.standard_normal((3, 6)).astype(np.float32) * 3, "b"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    for name, value in (("s0", 0), ("s2", 2), ("s4", 4)):
        inits.append(numpy_helper.from_array(np.array([value], np.int64), name))
    nodes = [helper.make_node("Slice", ["a", "s2", "s4", "axis0"], ["a_hi"]),
             helper.make_node("Slice", ["a", "s0", "s2", "axis0"], ["a_lo"]),
             helper.make_node("Concat", ["a_hi", "a_lo", "b"], ["w"], axis=0),
             helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "gathered", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_assembled_from_pieces_is_read_and_written_through_them():
    """The gathered view gives the weight the layer multiplies, autoinit writes its new rows into
    the source tensors (unused elements untouched), and the layer measures variance 1."""
    model = _gathered_model()
    graph = Graph(model)
    view = graph.weight_view("w")
    assert view is not None and set(view.sources) == {"a", "b"}
    np.testing.assert_array_equal(view.evaluate(graph), _run(model, ["w"])["w"])
    new = onnxinit.autoinit(model, seed=0)
    w = _run(new, ["w"])["w"]
    a = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == "a"))
    np.testing.assert_array_equal(w[:2], a[2:4])
    np.testing.assert_array_equal(w[2:4], a[0:2])
    assert abs(float(np.mean(w ** 2)) * 6 - 1.0) < 0.05   # Var(W) = 1 / fan_in for N(0, 1) input
    y = measure(new, ["y"], gaussian_feeds(new, 4096, np.random.default_rng(0)))["y"]
    assert 0.9 <= y[1] <= 1.1, y


def test_two_weights_cut_from_one_tensor_are_both_drawn():
    """Rows 0:3 and 3:6 of one tensor feed two layers (a packed projection sliced, as a training
    export of nn.MultiheadAttention does): both are drawn; the second was taken for a weight
    shared with the first and kept its exported values."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32) * 3, "packed")] + \
        [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("s3", 3), ("s6", 6), ("ax", 0))]
    nodes = [helper.make_node("Slice", ["packed", "s0", "s3", "ax"], ["first"]),
             helper.make_node("Slice", ["packed", "s3", "s6", "ax"], ["second"]),
             helper.make_node("Gemm", ["x", "first"], ["h1"], transB=1), helper.make_node("Relu", ["h1"], ["r"]),
             helper.make_node("Gemm", ["x", "second"], ["h2"], transB=1), helper.make_node("Add", ["r", "h2"], ["y"])]
    graph = helper.make_graph(nodes, "cut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    new, report = onnxinit.autoinit(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                    return_report=True)
    assert len(report.layers) == 2 and not report.warnings, report.warnings
    measured = measure(new, ["h1", "h2"], gaussian_feeds(new, 4096, np.random.default_rng(0)))
    for name in ("h1", "h2"):
        assert 0.8 <= measured[name][1] + measured[name][0] ** 2 <= 1.25, (name, measured[name])
