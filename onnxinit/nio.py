"""NIO: neural initialization optimization (Pan et al. 2022, Algorithm 3) for ONNX models.

One coefficient w_k per weight tensor scales it: theta = {w_k W_k}. On a batch cut into D
overlapping sub-batches S_d (slices of one full-batch forward), g_d = grad of the mean loss
over S_d, n_d = ||g_d||, c_ab = <g_a, g_b> / (n_a n_b), and

    authors (default; their released run):  GC = sum_{a!=b} c_ab / (D^2 - D),  GN = sum_d n_d,
        constrained norm mean_d n_d;  Adam on the coefficients, gradients clipped to +-1,
        coefficients at least 0.01 (0 for biases);  g covers every weight but BatchNorm's.
    paper (Algorithm 3 as written):  GC = sum_{a,b} c_ab / D^2,  GN = mean_d n_d,
        constrained norm max_d n_d;  plain steps, coefficients at least 0.01;  g covers every weight.

Each iteration draws a batch; if the constrained norm exceeds gamma it descends the mean
norm, else it ascends GC + GN. The derivative needs second order terms: with J the quantity
descended and v_d = dJ/dg_d (closed form, objective_direction),

    dJ/dw_k = sum_d <(H_d v_d)_k, W_k>,   H_d the Hessian of sub-batch d's loss at theta,
    H_d v_d ~ (g_d(theta + eps v_d) - g_d(theta)) / eps,   eps = h ||theta|| / ||v_d||, h = 1e-5

(forward differences, the default: g_d(theta) is already there, so D more gradients), or
(g_d(theta + eps v_d) - g_d(theta - eps v_d)) / (2 eps) with h = 1e-4 ("central": 2D more).
The gradients at the moved points are taken with every activation pattern (ReLU masks,
max-pool choices) frozen at theta (train/frozen.py): as double backward does, and without
the jumps of units crossing a kink, which otherwise make 20-30% of the result; all of them
come from one run of the stacked frozen graph (train/engine.py). Against PyTorch double
backward: forward 1e-4 to 3e-4 relative error, central 1e-5 to 1e-4 (tests/test_nio.py).

Sub-batches follow the authors' slicing in both variants (the paper's Eq. 7 leaves samples
out for D > 2). Deliberate difference from the authors' code: a bias whose coefficient
reaches 0 keeps receiving gradients (theirs is frozen there, its norm being 0).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxInitError

VARIANTS = ("authors", "paper")
STARTS = ("autoinit", "keep")
# differences -> h, the step relative to ||theta|| / ||v_d||: the most accurate in float32 against double
# backward on an MLP, a CNN and ResNet-20 + BN (central: 1e-3 gives 5e-3 on the ResNet, 1e-5 gives 1e-4-2e-4)
DIFFERENCES = {"central": 1e-4, "forward": 1e-5}
GAMMA_AUTO = 2.0        # gamma="auto": this multiple of the starting constrained norm
MIN_WEIGHT, MIN_BIAS = 0.01, 0.0
CLIP = 1.0
REPAIR_STEPS = 20
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass
class Statistics:
    """The sub-batch gradient statistics of one batch."""

    gc: float           # B-GC
    gn: float           # B-GN (sum of norms for authors, mean for paper)
    mean_norm: float
    max_norm: float

    def constrained(self, variant: str) -> float:
        return self.mean_norm if variant == "authors" else self.max_norm

    def finite(self) -> bool:
        return all(np.isfinite([self.gc, self.gn, self.mean_norm, self.max_norm]))


def subbatch_weights(batch: int, subbatches: int, overlap: float) -> np.ndarray:
    """(D, B) per-sample weights: 1/|S_d| on slice d, 0 elsewhere (the authors' slicing).

    With L = floor(B/D), S_d = [floor((1-r) L d), floor((1+r) L (d+1))), the first starting
    at 0 and the last ending at B; B=64, D=4, r=0.2 gives [0,19) [12,38) [25,57) [38,64).
    """
    if subbatches < 2 or batch < subbatches:
        raise OnnxInitError(f"need at least 2 sub-batches and a batch of at least that many samples "
                            f"(batch {batch}, sub-batches {subbatches})")
    if not 0 <= overlap < 1:
        raise OnnxInitError(f"overlap must be in [0, 1), not {overlap}")
    size = batch // subbatches
    weights = np.zeros((subbatches, batch), np.float32)
    for d in range(subbatches):
        start = 0 if d == 0 else int(np.floor((1 - overlap) * size * d + 1e-9))
        stop = batch if d == subbatches - 1 else min(batch, int(np.floor((1 + overlap) * size * (d + 1) + 1e-9)))
        weights[d, start:stop] = 1.0 / (stop - start)
    return weights


def gradient_statistics(flat: np.ndarray, variant: str) -> Statistics:
    """B-GC, B-GN and the norms of the (D, m) sub-batch gradients, as ``variant`` defines them."""
    norms = np.linalg.norm(flat, axis=1)
    count = len(norms)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = flat / norms[:, None]
        cosines = unit @ unit.T
    off = (cosines.sum() - np.trace(cosines)) / (count * count - count)
    if variant == "authors":
        return Statistics(float(off), float(norms.sum()), float(norms.mean()), float(norms.max()))
    return Statistics(float((off * (count * count - count) + count) / count ** 2), float(norms.mean()),
                      float(norms.mean()), float(norms.max()))


def objective_direction(flat: np.ndarray, variant: str, constrained: bool) -> np.ndarray:
    """v_d = dJ/dg_d for J = a GC + b sum_d n_d, GC = k sum_{a!=b} c_ab (constant diagonal aside).

    dc_ab/dg_a = (u_b - c_ab u_a) / n_a with u = g/n, so
    dJ/dg_a = 2 a k sum_{b!=a} (u_b - c_ab u_a) / n_a + b u_a.
    Constraint: a = 0, b = 1/D (the mean norm). Objective: a = -1 and b = -1 (authors,
    k = 1/(D^2-D)) or b = -1/D (paper, k = 1/D^2).
    """
    count = len(flat)
    norms = np.linalg.norm(flat, axis=1)
    unit = flat / norms[:, None]
    if constrained:
        return unit / count
    k, b = (1.0 / (count * count - count), -1.0) if variant == "authors" else (1.0 / count ** 2, -1.0 / count)
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, 0.0)
    pull = unit.sum(0)[None, :] - unit - cosines.sum(1)[:, None] * unit   # sum_{b!=a} (u_b - c_ab u_a)
    return -2.0 * k * pull / norms[:, None] + b * unit


class NioProblem:
    """The NIO objective on one model: statistics of g_d and their derivative wrt the coefficients."""

    def __init__(self, training, engine, variant: str = "authors", differences: str = "forward",
                 step: float | None = None):
        if variant not in VARIANTS:
            raise OnnxInitError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        if differences not in DIFFERENCES:
            raise OnnxInitError(f"differences must be one of {', '.join(DIFFERENCES)}, not {differences!r}")
        self.engine, self.variant, self.differences = engine, variant, differences
        self.step = DIFFERENCES[differences] if step is None else step
        self.base = {k: np.asarray(v, np.float64) for k, v in training.weights.items()}
        self.tracked = [k for k in self.base if variant == "paper" or k not in training.batchnorm]
        self.coefficients = [k for k in self.base if np.any(self.base[k])]
        self.minimum = {k: MIN_BIAS if variant == "authors" and k in training.biases else MIN_WEIGHT
                        for k in self.coefficients}

    def weights(self, omega: dict) -> dict:
        """theta: every W_k scaled by its coefficient (tensors without one as they are)."""
        return {k: (w * omega.get(k, 1.0)).astype(np.float32) for k, w in self.base.items()}

    def _flat(self, grads: dict) -> np.ndarray:
        """(D, m): the tracked gradients of every sub-batch, one row each."""
        return np.concatenate([grads[k].reshape(len(grads[k]), -1).astype(np.float64) for k in self.tracked], 1)

    def _unflat(self, row: np.ndarray) -> dict:
        out, offset = {}, 0
        for k in self.tracked:
            size = self.base[k].size
            out[k] = row[offset:offset + size].reshape(self.base[k].shape)
            offset += size
        return out

    def _at(self, theta: dict, feeds: dict, rows: np.ndarray):
        _, grads = self.engine.loss_and_grads(theta, feeds, rows)
        flat = self._flat(grads)
        return gradient_statistics(flat, self.variant), flat, grads

    def gradients(self, omega: dict, feeds: dict, rows: np.ndarray) -> tuple[Statistics, np.ndarray]:
        """Statistics and the (D, m) tracked gradients at theta(omega)."""
        stats, flat, _ = self._at(self.weights(omega), feeds, rows)
        return stats, flat

    def coefficient_gradient(self, omega: dict, feeds: dict, rows: np.ndarray, gamma: float | None = None):
        """(statistics, constrained?, {k: dJ/dw_k} or None where the gradients are not finite);
        constrained when the norm exceeds gamma (never when gamma is None: J = -(GC + GN))."""
        theta = self.weights(omega)
        stats, flat, grads = self._at(theta, feeds, rows)
        constrained = gamma is not None and stats.constrained(self.variant) > gamma
        if not stats.finite():
            return stats, constrained, None
        v = objective_direction(flat, self.variant, constrained)
        return stats, constrained, self._second_order(theta, grads, v, feeds, rows)

    def _second_order(self, theta: dict, grads: dict, v: np.ndarray, feeds: dict, rows: np.ndarray) -> dict:
        """sum_d <(H_d v_d)_k, W_k> for every coefficient k, by finite differences of frozen gradients:
        (g_d(theta + eps_d v_d) - g_d(theta - eps_d v_d)) / 2 eps_d (central), or against g_d(theta)
        (forward); every perturbed gradient from one run of the stacked frozen graph."""
        scale = np.sqrt(sum(float(np.sum(theta[k].astype(np.float64) ** 2)) for k in self.tracked))
        signs = (1.0, -1.0) if self.differences == "central" else (1.0,)
        points, point_rows, steps = [], [], []
        for d in range(len(rows)):
            eps = self.step * scale / max(np.linalg.norm(v[d]), 1e-300)
            move = self._unflat(v[d] * eps)
            steps.append(eps)
            for sign in signs:
                points.append({k: theta[k] + sign * move[k] if k in move else theta[k] for k in theta})
                point_rows.append(rows[d])
        perturbed = self.engine.frozen_gradients(points, feeds, np.stack(point_rows), reference=theta)
        dj = dict.fromkeys(self.coefficients, 0.0)
        for d, eps in enumerate(steps):
            if self.differences == "central":
                high, low, span = perturbed[2 * d], perturbed[2 * d + 1], 2 * eps
            else:
                high, low, span = perturbed[d], {k: g[d] for k, g in grads.items()}, eps
            for k in self.coefficients:
                dj[k] += float(np.vdot(high[k].astype(np.float64) - low[k], self.base[k])) / span
        return dj


class CoefficientAdam:
    """The authors' optimizer on the coefficients (GradInit's RescaleAdam, per coefficient):
    gradient clipped to +-1; first moments m kept apart for constraint and objective steps
    (each corrected by 1 - b1^t with its own step count t), the second moment v shared
    (corrected by 1 - b2^T, T all steps); w <- max(w - lr m_hat / (sqrt(v_hat) + eps), minimum)."""

    def __init__(self, names, lr: float):
        self.lr = lr
        self.m = {kind: dict.fromkeys(names, 0.0) for kind in (True, False)}
        self.v = dict.fromkeys(names, 0.0)
        self.steps = {True: 0, False: 0}

    def step(self, omega: dict, grads: dict, constrained: bool, minimum: dict) -> None:
        beta1, beta2 = BETAS
        self.steps[constrained] += 1
        first = 1 - beta1 ** self.steps[constrained]
        second = 1 - beta2 ** (self.steps[True] + self.steps[False])
        for k, g in grads.items():
            g = min(max(g, -CLIP), CLIP)
            m = self.m[constrained][k] = beta1 * self.m[constrained][k] + (1 - beta1) * g
            v = self.v[k] = beta2 * self.v[k] + (1 - beta2) * g * g
            omega[k] = max(omega[k] - self.lr / first * m / (np.sqrt(v / second) + ADAM_EPS), minimum[k])


class PlainSteps:
    """Algorithm 3's update: w <- max(w - lr dJ/dw, minimum)."""

    def __init__(self, lr: float):
        self.lr = lr

    def step(self, omega: dict, grads: dict, constrained: bool, minimum: dict) -> None:
        for k, g in grads.items():
            omega[k] = max(omega[k] - self.lr * g, minimum[k])


def _start_model(model_or_path, start: str, seed: int) -> onnx.ModelProto:
    from .api import _as_model, autoinit
    if start not in STARTS:
        raise OnnxInitError(f"start must be one of {', '.join(STARTS)}, not {start!r}")
    return autoinit(model_or_path, seed=seed) if start == "autoinit" else _as_model(model_or_path)[0]


def _scaled_model(model: onnx.ModelProto, problem: NioProblem, omega: dict) -> onnx.ModelProto:
    """``model`` with every coefficient tensor's payload multiplied by its coefficient."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in omega:
            value = (problem.base[tensor.name] * omega[tensor.name]).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return out


def _iterate(problem: NioProblem, steps, dataset, labels: str, rows, gamma: float, iters: int, rng, progress):
    """Algorithm 3's loop: (coefficients, history, why it stopped early or None)."""
    omega = dict.fromkeys(problem.coefficients, 1.0)
    last, history = dict(omega), []
    for it in range(iters):
        feeds = dataset.feeds(rng.choice(len(dataset), len(rows[0]), replace=False), labels)
        stats, constrained, grads = problem.coefficient_gradient(omega, feeds, rows, gamma)
        if grads is None:
            return last, history, f"gradients not finite at iteration {it}; returned the last coefficients " \
                                  "with finite gradients"
        last = dict(omega)
        steps.step(omega, grads, constrained, problem.minimum)
        history.append({"iteration": it, "constrained": constrained, **asdict(stats)})
        if progress is not None:
            progress(it, stats.gc, stats.gn, stats.max_norm)
    return omega, history, None


def nio(model_or_path, data, input_map: dict | None = None, labels: str = "y", output_name: str | None = None,
        iters: int = 100, batch: int = 128, subbatches: int = 4, overlap: float = 0.2, gamma=10.0,
        lr: float = 0.003, seed: int = 0, start: str = "autoinit", variant: str = "authors", loss: str = "ce",
        device: str = "auto", differences: str = "forward", progress=None):
    """Run NIO; returns (new ModelProto, report dict). See the module docstring.

    ``data``: dict of arrays or an .npz path, model inputs by name (or via ``input_map``,
    data key -> input name) and the labels under ``labels``. ``start="autoinit"`` first
    runs AutoInit (seeded with ``seed``); the result differs from the starting model only
    by one scale per weight tensor. ``gamma="auto"``: twice the starting constrained norm.
    ``differences="forward"`` reuses g_d(theta) for the Hessian-vector products: a third
    fewer gradient runs, relative error ~3e-4 instead of ~1e-4 (central is the safer choice
    where repeated gradient runs are not bit-identical, as with some CUDA kernels).
    ``progress(iteration, gc, gn, max_norm)`` is called after every iteration.

    The report's ``before`` / ``after`` statistics are measured on one evaluation batch
    drawn first. Unlike Algorithm 3, the result is made feasible: while the evaluation
    batch's constrained norm exceeds gamma after the T iterations, constraint steps go on
    (at most ``REPAIR_STEPS``; ``report["repair_steps"]`` counts them).
    """
    from .api import record_provenance, single_threaded_blas
    from .train.data import check_labels, load_dataset
    from .train.engine import GradientEngine
    from .train.graph import build_training_graph, training_runtime

    started = time.perf_counter()
    if iters < 0 or lr <= 0:
        raise OnnxInitError("iters must be >= 0 and lr > 0")
    if gamma != "auto" and not (isinstance(gamma, (int, float)) and gamma > 0):
        raise OnnxInitError(f"gamma must be a positive number or 'auto', not {gamma!r}")
    training_runtime()   # before AutoInit: say at once when the training build is missing
    model = _start_model(model_or_path, start, seed)
    training = build_training_graph(model, output_name, loss)
    engine = GradientEngine(training, device)
    dataset = load_dataset(data, model, input_map, labels, loss)
    check_labels(dataset, loss, engine.forward({}, {k: a[:2] for k, a in dataset.inputs.items()}).shape)
    size = min(batch, len(dataset))
    rows = subbatch_weights(size, subbatches, overlap)
    problem = NioProblem(training, engine, variant, differences)
    rng = np.random.default_rng(seed)
    held = dataset.feeds(rng.choice(len(dataset), size, replace=False), training.labels)
    before, _ = problem.gradients({}, held, rows)
    if not before.finite():
        raise OnnxInitError("the starting model's gradients are not finite on the data")
    gamma = GAMMA_AUTO * before.constrained(variant) if gamma == "auto" else float(gamma)
    steps = CoefficientAdam(problem.coefficients, lr) if variant == "authors" else PlainSteps(lr)
    with single_threaded_blas():   # numpy between ONNX Runtime runs: BLAS threads would only contend
        omega, history, stopped = _iterate(problem, steps, dataset, training.labels, rows, gamma, iters, rng,
                                           progress)
        after, _ = problem.gradients(omega, held, rows)
        repairs = 0
        while after.finite() and after.constrained(variant) > gamma and repairs < REPAIR_STEPS:
            _, _, grads = problem.coefficient_gradient(omega, held, rows, gamma=0.0)
            if grads is None:
                break
            steps.step(omega, grads, True, problem.minimum)
            repairs += 1
            after, _ = problem.gradients(omega, held, rows)
    out = _scaled_model(model, problem, omega)
    record_provenance(out, {"command": "nio", "seed": str(seed), "nio.variant": variant, "nio.start": start})
    return out, {"before": asdict(before), "after": asdict(after), "gamma": gamma, "coefficients": omega,
                 "history": history, "repair_steps": repairs, "stopped": stopped,
                 "seconds": time.perf_counter() - started,
                 "options": {"iters": iters, "batch": size, "subbatches": subbatches, "overlap": overlap, "lr": lr,
                             "seed": seed, "start": start, "variant": variant, "loss": loss,
                             "differences": differences, "providers": engine.providers}}
