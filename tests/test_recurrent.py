"""LSTM / GRU / RNN (kinds/recurrent.py) on a real export: gate pre-activations of variance 1,
output statistics as ONNX Runtime measures them, before and after autoinit."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxinit
from conftest import ALL_SAMPLES
from onnxinit.inspect import inspect_model
from onnxinit.measure import gaussian_feeds, measure, with_outputs

SAMPLE = next(p for p in ALL_SAMPLES if p.stem == "rnn_stack")
BATCH = 256


def _run(model, names):
    import onnxruntime as ort
    session = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = gaussian_feeds(model, BATCH, np.random.default_rng(7))
    return dict(zip(names, session.run(names, feeds)))


def _pre_activations(node, weights, x, y, reverse=(False, True)):
    """a = W x_t + R h_(t-1) for every gate and direction over its second half of the steps (layout 0:
    x (T, B, I), y (T, D, B, H)); the reverse direction's previous state is step t+1's."""
    w, r = weights[node.input[1]], weights[node.input[2]]
    steps = x.shape[0]
    out = []
    for d in range(w.shape[0]):
        for t in (range(0, steps - steps // 2) if reverse[d] else range(steps // 2, steps)):
            previous = t + 1 if reverse[d] else t - 1
            if not 0 <= previous < steps:
                continue
            out.append(x[t] @ w[d].T + y[previous, d] @ r[d].T)
    return np.concatenate(out)


def test_gate_pre_activations_have_unit_variance_after_autoinit():
    model, report = onnxinit.autoinit(SAMPLE, seed=0, return_report=True)
    nodes = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU")]
    assert len(report.extra["recurrent"]) == len(nodes) == 3
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values = _run(model, [n.input[0] for n in nodes] + [n.output[0] for n in nodes])
    for node in nodes:
        a = _pre_activations(node, weights, values[node.input[0]].astype(np.float64),
                             values[node.output[0]].astype(np.float64))
        hidden = node.attribute[[x.name for x in node.attribute].index("hidden_size")].i
        gates = {"LSTM": 4, "GRU": 2}[node.op_type]   # GRU: update and reset (the candidate gates r * (R h))
        variance = a[:, :gates * hidden].var()
        assert 0.85 <= variance <= 1.15, (node.name, variance)
        for bias in node.input[3:4]:
            assert not np.any(weights[bias])


@pytest.mark.parametrize("initialized", [False, True], ids=["pytorch init", "autoinit"])
def test_recurrent_outputs_predicted_as_measured(initialized):
    """The predicted moments of every LSTM / GRU output (PyTorch's own weights, then AutoInit's)
    are ONNX Runtime's within 10%; before this kind they were passed through (0.34 predicted,
    0.003-0.01 measured)."""
    model = onnxinit.autoinit(SAMPLE, seed=0) if initialized else onnx.load(SAMPLE)
    result = inspect_model(model, measure_signal=True, batch=BATCH, all_tensors=True)
    rows = [r for r in result.rows if r.op_type in ("LSTM", "GRU")]
    assert len(rows) == 3 and not result.report.fallbacks
    for r in rows:
        assert abs(r.predicted.second_moment - (r.measured[1] + r.measured[0] ** 2)) <= \
            0.1 * (r.measured[1] + r.measured[0] ** 2), (r.node, r.predicted, r.measured)


def test_head_on_the_last_step_is_in_band_for_every_seed():
    """The head reads the last step only, where the reverse GRU direction has seen one input:
    per-step and per-direction statistics put it in band for every seed."""
    for seed in range(4):
        model = onnxinit.autoinit(SAMPLE, seed=seed)
        head = next(n.output[0] for n in model.graph.node if n.op_type == "Gemm")
        variance = measure(model, [head], gaussian_feeds(model, BATCH, np.random.default_rng(0)))[head][1]
        assert 0.8 <= variance <= 1.25, (seed, variance)


def _hand_built(op: str, layout: int, direction: str, hidden: int = 8, width: int = 6, steps: int = 10):
    """X -> op (layout, direction) -> Y, Y_h, with random weights and biases."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(3)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    d = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name) for name, shape in
             (("W", (d, gates * hidden, width)), ("R", (d, gates * hidden, hidden)), ("B", (d, 2 * gates * hidden)))]
    x_shape = ["N", steps, width] if layout else [steps, "N", width]
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y", "y_h"], hidden_size=hidden, direction=direction,
                            layout=layout, name="rec")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op,layout,direction", [("LSTM", 1, "bidirectional"), ("GRU", 0, "reverse"),
                                                 ("RNN", 1, "forward")])
def test_hand_built_layouts_and_directions(op, layout, direction):
    """Batch-first layout, reverse and bidirectional runs, RNN: outputs predicted within 10% of
    ONNX Runtime with the model's weights, and after autoinit every gate's pre-activation has
    variance 1 and the biases are 0."""
    from onnx.reference import ReferenceEvaluator   # ONNX Runtime runs only layout 0
    model = _hand_built(op, layout, direction)
    x = np.random.default_rng(1).standard_normal((BATCH, 10, 6) if layout else (10, BATCH, 6)).astype(np.float32)
    for current in (model, onnxinit.autoinit(model, seed=0)):
        y, y_h = ReferenceEvaluator(current).run(None, {"x": x})
        predicted = inspect_model(current).report.output_moments
        for name, value in (("y", y), ("y_h", y_h)):
            measured = float(np.mean(value.astype(np.float64) ** 2))
            assert abs(predicted[name].second_moment - measured) <= 0.1 * measured, (name, predicted[name], measured)
    weights = {t.name: numpy_helper.to_array(t) for t in current.graph.initializer}
    assert not np.any(weights["B"])
    reverse = [direction == "reverse", True]
    if layout:
        x, y = np.swapaxes(x, 0, 1), np.transpose(y, (1, 2, 0, 3))
    gates = {"LSTM": 4, "GRU": 2, "RNN": 1}[op]
    a = _pre_activations(current.graph.node[0], weights, x.astype(np.float64), y.astype(np.float64), reverse)
    for g in range(gates):
        variance = a[:, g * 8:(g + 1) * 8].var()
        assert 0.85 <= variance <= 1.15, (op, g, variance)


def test_weights_assembled_as_torch_dynamo_exports_them_are_drawn():
    """torch's dynamo exporter feeds LSTM its W and R as Unsqueeze(Concat(Slice(weight, gate)...)),
    PyTorch's gate order made ONNX's: autoinit draws them through those pieces (they were left
    as exported), and every gate's pre-activation has variance 1."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(5)
    hidden, width, steps = 8, 6, 10
    inits = [numpy_helper.from_array(rng.uniform(-0.3, 0.3, (4 * hidden, n)).astype(np.float32), name)
             for name, n in (("weight_ih", width), ("weight_hh", hidden))]
    inits += [numpy_helper.from_array(np.array([v], np.int64), f"at{v}") for v in range(0, 5 * hidden, hidden)]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    nodes = []
    for weight in ("weight_ih", "weight_hh"):
        pieces = []
        for gate in (0, 3, 1, 2):   # PyTorch's i, f, g, o as ONNX's i, o, f, c
            pieces.append(f"{weight}_{gate}")
            nodes.append(helper.make_node("Slice", [weight, f"at{gate * hidden}", f"at{(gate + 1) * hidden}", "axis0"],
                                          [pieces[-1]]))
        nodes += [helper.make_node("Concat", pieces, [f"{weight}_onnx"], axis=0),
                  helper.make_node("Unsqueeze", [f"{weight}_onnx", "axis0"], [f"{weight}_3d"])]
    nodes.append(helper.make_node("LSTM", ["x", "weight_ih_3d", "weight_hh_3d"], ["y"], hidden_size=hidden))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    new, report = onnxinit.autoinit(model, seed=0, return_report=True)
    assert len(report.extra["recurrent"]) == 1
    values = _run(new, ["weight_ih_3d", "weight_hh_3d"])
    weights = {n + "_3d": values[n + "_3d"] for n in ("weight_ih", "weight_hh")}
    x = np.random.default_rng(1).standard_normal((steps, BATCH, width)).astype(np.float32)
    from onnx.reference import ReferenceEvaluator
    y = ReferenceEvaluator(new).run(None, {"x": x})[0]
    a = _pre_activations(new.graph.node[-1], weights, x.astype(np.float64), y.astype(np.float64))
    for g in range(4):
        assert 0.85 <= a[:, g * hidden:(g + 1) * hidden].var() <= 1.15, (g, a[:, g * hidden:(g + 1) * hidden].var())
