"""NIO (onnxinit/nio.py): sub-batches, dJ/dw against PyTorch double backward, NIO on digits."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import ALL_SAMPLES
from onnxinit.errors import OnnxInitError
from onnxinit.nio import NioProblem, gradient_statistics, objective_direction, subbatch_weights

SAMPLE = {p.stem: p for p in ALL_SAMPLES}


def test_subbatches_follow_the_authors_slicing():
    rows = subbatch_weights(64, 4, 0.2)
    spans = [tuple(np.flatnonzero(r)[[0, -1]] + [0, 1]) for r in rows]
    assert spans == [(0, 19), (12, 38), (25, 57), (38, 64)]
    np.testing.assert_allclose(rows.sum(1), 1.0, rtol=1e-6)
    assert [np.count_nonzero(r) for r in subbatch_weights(10, 2, 0.0)] == [5, 5]
    with pytest.raises(OnnxInitError):
        subbatch_weights(3, 4, 0.2)


@pytest.mark.parametrize("variant", ["authors", "paper"])
@pytest.mark.parametrize("constrained", [False, True])
def test_direction_is_the_derivative_of_the_statistics(variant, constrained):
    """v_d = dJ/dg_d in closed form against central differences of J(g) in float64."""
    g = np.random.default_rng(0).standard_normal((3, 7))

    def objective(flat):
        s = gradient_statistics(flat, variant)
        return s.mean_norm if constrained else -(s.gc + s.gn)

    v = objective_direction(g, variant, constrained)
    numeric = np.zeros_like(g)
    for index in np.ndindex(g.shape):
        step = np.zeros_like(g)
        step[index] = 1e-6
        numeric[index] = (objective(g + step) - objective(g - step)) / 2e-6
    np.testing.assert_allclose(v, numeric, rtol=1e-6, atol=1e-8)


ORACLE_CASES = [  # sample, batch, sub-batches, variant, constrained, finite differences (forward: the default)
    ("mlp_relu_deep", 64, 4, "authors", False, "forward"),
    ("cnn_plain", 32, 3, "authors", False, "forward"),
    ("resnet20_bn_train", 32, 4, "authors", False, "forward"),
    ("cnn_plain", 32, 3, "paper", True, "forward"),
    ("mlp_relu_deep", 64, 4, "authors", False, "central"),
    ("resnet20_bn_train", 32, 4, "authors", False, "central"),
    ("cnn_plain", 32, 3, "paper", True, "central"),
]


@pytest.mark.training
@pytest.mark.parametrize("name,batch,count,variant,constrained,differences", ORACLE_CASES)
def test_coefficient_gradient_matches_double_backward(name, batch, count, variant, constrained, differences):
    pytest.importorskip("torch")
    from onnxinit.train.engine import GradientEngine
    from onnxinit.train.graph import build_training_graph
    from torch_oracle import coefficient_gradient
    model = onnx.load(SAMPLE[name])
    training = build_training_graph(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))
    x = x.astype(np.float32)
    y = rng.integers(0, 10, batch)
    rows = subbatch_weights(batch, count, 0.2)
    problem = NioProblem(training, GradientEngine(training), variant, differences)
    omega = {k: float(rng.uniform(0.7, 1.3)) for k in problem.coefficients}
    _, was_constrained, ours = problem.coefficient_gradient(omega, {"input": x, training.labels: y}, rows,
                                                            gamma=0.0 if constrained else None)
    assert was_constrained == constrained
    expected = coefficient_gradient(model, training.weights, omega, x, y, rows, problem.tracked,
                                    problem.coefficients, variant, constrained)
    a = np.array([ours[k] for k in problem.coefficients])
    b = np.array([expected[k] for k in problem.coefficients])
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.999
    assert np.linalg.norm(a - b) <= 0.01 * np.linalg.norm(b)


def _digits():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    x, y = load_digits(return_X_y=True)
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order[:1400]], y[order[:1400]]), (x[order[1400:]], y[order[1400:]])


def _held_out(model, x, y, batch=64):
    """Mean over held-out batches of (GC + GN, mean sub-batch norm), authors' definitions."""
    from onnxinit.train.engine import GradientEngine
    from onnxinit.train.graph import build_training_graph
    training = build_training_graph(model)
    problem = NioProblem(training, GradientEngine(training))
    rows = subbatch_weights(batch, 4, 0.2)
    values = []
    for start in range(0, len(x) - batch + 1, batch):
        stats, _ = problem.gradients({}, {"input": x[start:start + batch], training.labels: y[start:start + batch]},
                                     rows)
        values.append((stats.gc + stats.gn, stats.mean_norm))
    return np.mean(values, 0)


@pytest.mark.training
def test_nio_on_digits_raises_the_objective_within_the_bound():
    from onnxinit.api import autoinit
    from onnxinit.nio import nio
    (x, y), (x_held, y_held) = _digits()
    path = SAMPLE["mlp_relu_deep"]   # 64 inputs, 10 classes: the digits' shape
    calls = []
    out, report = nio(path, {"input": x, "y": y}, iters=30, batch=64, gamma="auto", seed=0,
                      progress=lambda *args: calls.append(args))
    assert len(calls) == 30 == len(report["history"]) and report["stopped"] is None
    assert any(h["constrained"] for h in report["history"])   # the bound was reached and held
    gamma = report["gamma"]
    assert report["after"]["mean_norm"] <= gamma
    start = autoinit(path, seed=0)
    before, after = _held_out(start, x_held, y_held), _held_out(out, x_held, y_held)
    assert after[0] > 1.2 * before[0]
    assert after[1] <= gamma
    # one scale per weight tensor, nothing else changed
    old = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in start.graph.initializer}
    for t in out.graph.initializer:
        new = numpy_helper.to_array(t)
        scale = report["coefficients"].get(t.name, 1.0)
        np.testing.assert_allclose(new, old[t.name] * scale, rtol=1e-6, atol=1e-30)
    assert out.graph.node == start.graph.node
    assert {p.key: p.value for p in out.metadata_props}["onnxinit.command"] == "nio"


@pytest.mark.training
def test_paper_variant_and_central_differences_run():
    from onnxinit.nio import nio
    (x, y), _ = _digits()
    _, report = nio(SAMPLE["mlp_relu_deep"], {"features": x, "y": y}, input_map={"features": "input"},
                    iters=3, batch=32, subbatches=2, overlap=0.0, gamma=1e6, variant="paper",
                    differences="central", start="keep")
    assert len(report["history"]) == 3 and not any(h["constrained"] for h in report["history"])
    assert all(c >= 0.01 for c in report["coefficients"].values())


@pytest.mark.training
def test_nio_rejects_bad_data(tmp_path):
    from onnxinit.nio import nio
    (x, y), _ = _digits()
    path = SAMPLE["mlp_relu_deep"]
    cases = [({"x": x, "labels": y}, "no labels array 'y'"),
             ({"a": x, "b": x, "y": y}, "no array for model input"),
             ({"input": np.where(x > 2, np.nan, x), "y": y}, "NaN or infinite"),
             ({"input": x, "y": y + 5}, "outside the 10 classes"),
             ({"input": x[:10], "y": y}, "different sample counts")]
    for data, message in cases:
        with pytest.raises(OnnxInitError, match=message):
            nio(path, data, iters=1, start="keep")
    np.savez(tmp_path / "d.npz", pixels=x, target=y)
    with pytest.raises(OnnxInitError, match="input_map names"):
        nio(path, tmp_path / "d.npz", labels="target", input_map={"pixels": "nope"}, iters=1, start="keep")
    for bad in ({"gamma": -1}, {"variant": "mine"}, {"start": "zeros"}):
        with pytest.raises(OnnxInitError):
            nio(path, tmp_path / "d.npz", labels="target", iters=1, **bad)
