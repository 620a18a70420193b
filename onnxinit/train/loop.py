"""A plain training loop on the GradientEngine: minibatch steps, a loss curve, accuracy."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .data import Dataset, check_labels, load_dataset
from .engine import GradientEngine
from .graph import build_training_graph
from .optim import make_optimizer


@dataclass
class TrainResult:
    losses: list[float]                  # mean minibatch loss, one per step taken
    accuracy: float | None               # after training, on eval_data (else the training data); None for mse
    diverged: bool                       # a loss or gradient became NaN or infinite (training stopped there)
    weights: dict = field(default_factory=dict)   # the trained weights


def accuracy(engine: GradientEngine, weights: dict, dataset: Dataset, batch: int) -> float:
    """Share of samples whose argmax over the logits' axis 1 is the label (forward in chunks of
    ``batch``; BatchNormalization in training mode, as trained, so with each chunk's statistics)."""
    hits = 0
    for start in range(0, len(dataset), batch):
        index = np.arange(start, min(start + batch, len(dataset)))
        logits = engine.forward(weights, {k: a[index] for k, a in dataset.inputs.items()})
        hits += int(np.sum(np.argmax(logits, axis=1) == dataset.labels[index]))
    return hits / len(dataset)


def train(model: onnx.ModelProto, data, steps: int, batch: int, lr: float, optimizer: str = "sgd", seed: int = 0,
          on_step=None, loss: str = "ce", labels: str = "y", input_map: dict | None = None,
          output_name: str | None = None, eval_data=None, device: str = "auto", **optimizer_options) -> TrainResult:
    """``steps`` minibatch steps of ``optimizer`` on ``data`` (dict of arrays or .npz, as for NIO),
    batches drawn without replacement, reshuffled each epoch (seeded). ``on_step(step, loss)``
    is called after every step. A NaN or infinite loss or gradient ends training with
    ``diverged=True`` rather than an error.
    """
    training = build_training_graph(model, output_name, loss)
    engine = GradientEngine(training, device)
    dataset = load_dataset(data, model, input_map, labels, loss)
    check_labels(dataset, loss, engine.forward({}, {k: a[:2] for k, a in dataset.inputs.items()}).shape)
    opt = make_optimizer(optimizer, lr, **optimizer_options)
    weights = {k: v.astype(np.float32, copy=True) for k, v in training.weights.items()}
    rng = np.random.default_rng(seed)
    size = min(batch, len(dataset))
    order, cursor, losses, diverged = rng.permutation(len(dataset)), 0, [], False
    for step in range(steps):
        if cursor + size > len(order):
            order, cursor = rng.permutation(len(dataset)), 0
        index = order[cursor:cursor + size]
        cursor += size
        value, grads = engine.loss_and_grads(weights, dataset.feeds(index, training.labels))
        if not np.isfinite(value) or not all(np.all(np.isfinite(g)) for g in grads.values()):
            diverged = True
            break
        opt.step(weights, grads)
        losses.append(value)
        if on_step is not None:
            on_step(step, value)
    score = None
    if loss == "ce" and not diverged:
        held = dataset if eval_data is None else load_dataset(eval_data, model, input_map, labels, loss)
        score = accuracy(engine, weights, held, size)
    return TrainResult(losses=losses, accuracy=score, diverged=diverged, weights=weights)
