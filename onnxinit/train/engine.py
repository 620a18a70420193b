"""GradientEngine: loss and weight gradients of a training graph with ONNX Runtime.

The weights are session inputs, so new weights cost no rebuild. With per-sample weights
s (one row, or D rows for D sub-batches) one call returns

    L_d = sum_i s_di l_i     and     g_d = dL_d/dW   for every trainable W,

all from ONE forward pass over the full batch (BatchNormalization sees the whole batch):
D rows run the stacked gradient graph, which shares the forward and repeats the backward
(graph.stacked_gradient_graph), cheaper than D runs of the plain graph. Gradients at
K weight points with activation patterns frozen at reference weights (NIO's finite
differences) come from one run of the stacked frozen graph (``frozen_gradients``).
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxInitError
from .frozen import REF
from .graph import (TrainingGraph, session_options, stacked_frozen_graph, stacked_gradient_graph,
                    training_runtime)

DEVICES = ("auto", "cpu", "cuda")


def training_providers(runtime, device: str = "auto") -> list[str]:
    """CUDA first when present and ``device`` is auto or cuda, then CPU."""
    if device not in DEVICES:
        raise OnnxInitError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    available = runtime.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise OnnxInitError("device cuda: this ONNX Runtime training build has no CUDAExecutionProvider "
                            "(install the CUDA build of onnxruntime-training)")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class GradientEngine:
    """Runs ``training``'s gradient graph; see the module docstring.

    The sessions, each built on first use: the gradient graph, the stacked graph per
    sub-batch count, the stacked frozen graph per point count (``frozen_gradients``) and the
    forward pass alone (logits for accuracy: ONNX Runtime runs a whole graph whatever
    outputs are asked for).
    """

    def __init__(self, training: TrainingGraph, device: str = "auto"):
        self.runtime = training_runtime()[0]
        self.training = training
        self.providers = training_providers(self.runtime, device)
        self._sessions: dict = {}

    def _session(self, key, build):
        if key not in self._sessions:
            try:
                self._sessions[key] = self.runtime.InferenceSession(
                    build().SerializeToString(), session_options(self.runtime), providers=self.providers)
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime refuses the graph
                raise OnnxInitError(f"ONNX Runtime cannot load the training graph ({_first_line(exc)})") from exc
        return self._sessions[key]

    @staticmethod
    def _run(session, names: list, feeds: dict) -> list:
        try:
            return session.run(names, feeds)
        except Exception as exc:  # noqa: BLE001 - wrong shapes or types in the feeds
            raise OnnxInitError(f"ONNX Runtime cannot run the training graph ({_first_line(exc)})") from exc

    def _weight_feeds(self, weights: dict) -> dict:
        unknown = set(weights) - set(self.training.weights)
        if unknown:
            raise OnnxInitError(f"not trainable weights of this model: {sorted(unknown)[:5]}")
        merged = {**self.training.weights, **weights}
        return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in merged.items()}

    def loss_and_grads(self, weights: dict, feeds: dict, sample_weights=None):
        """(loss, {weight: gradient}) at ``weights`` (missing ones: the model's own).

        ``feeds``: the model's inputs and the labels (key ``training.labels``).
        ``sample_weights``: None (the mean loss), a vector over the batch, or a (D, N)
        matrix: then the loss has shape (D,) and each gradient a leading axis of D.
        """
        if self.training.labels not in feeds:
            raise OnnxInitError(f"feeds need the labels under {self.training.labels!r}")
        run_feeds = {**feeds, **self._weight_feeds(weights)}
        names = [self.training.loss] + [self.training.grads[w] for w in self.training.weights]
        rows = None if sample_weights is None else np.asarray(sample_weights, np.float32)
        if rows is not None and self.training.sample_weights is None:
            raise OnnxInitError("this training graph was built without per-sample weights")
        if rows is not None and rows.ndim == 2:
            return self._stacked(names, run_feeds, rows)
        if rows is not None and rows.ndim != 1:
            raise OnnxInitError("sample_weights must be a vector or a (D, N) matrix")
        if self.training.sample_weights is not None:
            size = len(feeds[self.training.labels])
            run_feeds[self.training.sample_weights] = np.full(size, 1.0 / size, np.float32) if rows is None else rows
        session = self._session("plain", lambda: self.training.model)
        loss, *grads = self._run(session, names, run_feeds)
        return float(loss), dict(zip(self.training.weights, grads))

    def _stacked(self, names: list, run_feeds: dict, rows: np.ndarray):
        count = len(rows)
        session = self._session(("stacked", count), lambda: stacked_gradient_graph(self.training, count))
        for d in range(count):
            run_feeds[f"{self.training.sample_weights}/{d}"] = rows[d]
        results = self._run(session, [f"{name}/{d}" for name in names for d in range(count)], run_feeds)
        per_name = [np.stack(results[k * count:(k + 1) * count]) for k in range(len(names))]
        return per_name[0], dict(zip(self.training.weights, per_name[1:]))

    def frozen_gradients(self, points: list, feeds: dict, rows: np.ndarray, reference: dict) -> list:
        """[{weight: gradient}]: at each weight point ``points[j]`` (missing weights: the model's
        own) with sample weights ``rows[j]``, activation patterns frozen at ``reference``; one
        run of the stacked frozen graph, which computes the reference pass once."""
        count = len(points)
        rows = np.asarray(rows, np.float32)
        if self.training.sample_weights is None or rows.shape[0] != count or rows.ndim != 2:
            raise OnnxInitError("frozen_gradients needs a graph with sample weights and one row per point")
        if self.training.labels not in feeds:
            raise OnnxInitError(f"feeds need the labels under {self.training.labels!r}")
        session = self._session(("frozen", count), lambda: stacked_frozen_graph(self.training, count))
        run_feeds = {**feeds, **{REF + k: v for k, v in self._weight_feeds(reference).items()}}
        for j, point in enumerate(points):
            run_feeds.update({f"{k}/{j}": v for k, v in self._weight_feeds(point).items()})
            run_feeds[f"{self.training.sample_weights}/{j}"] = rows[j]
        names = [self.training.grads[w] for w in self.training.weights]
        results = self._run(session, [f"{name}/{j}" for j in range(count) for name in names], run_feeds)
        per_point = len(names)
        return [dict(zip(self.training.weights, results[j * per_point:(j + 1) * per_point])) for j in range(count)]

    def forward(self, weights: dict, feeds: dict) -> np.ndarray:
        """The logits at ``weights``, from the model's inputs in ``feeds``."""
        missing = [name for name in self.training.inputs if name not in feeds]
        if missing:
            raise OnnxInitError(f"feeds lack the model input(s) {missing}")
        session = self._session("forward", lambda: self.training.forward)
        run_feeds = {name: feeds[name] for name in self.training.inputs}
        return self._run(session, [self.training.logits], {**run_feeds, **self._weight_feeds(weights)})[0]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
