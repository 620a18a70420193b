"""`onnxinit compare`: train several initializations of a model the same way, side by side.

Each model is trained from the weights it holds for ``steps`` minibatch steps with ONNX
Runtime's training backend (train/loop.py; CUDA when present), once per seed; a seed fixes
the batch order, which is the same for every model. The held-out split (arrays named
``<key>_test`` in the data, else the last ``test_fraction`` of a seeded shuffle) gives the
final accuracy. A run whose loss or gradients become NaN or infinite is reported as diverged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .api import _as_model
from .errors import OnnxInitError
from .train.data import read_arrays
from .train.loop import train

SPLIT_SEED = 12345


@dataclass
class Run:
    seed: int
    losses: list
    accuracy: float | None
    diverged: bool
    seconds: float


@dataclass
class ModelRuns:
    name: str
    path: str
    runs: list = field(default_factory=list)

    def loss_at(self, step: int, window: int = 10) -> tuple[float, float]:
        """Mean and std over seeds of the mean loss over the ``window`` steps ending at ``step``
        (1-based); NaN where a run diverged before it."""
        values = []
        for r in self.runs:
            if len(r.losses) < step:
                values.append(np.nan)
            else:
                values.append(float(np.mean(r.losses[max(0, step - window):step])))
        return _mean_std(values)

    def accuracy(self) -> tuple[float, float]:
        return _mean_std([np.nan if r.accuracy is None else r.accuracy for r in self.runs])

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.runs)

    def as_dict(self, checkpoints) -> dict:
        return {"name": self.name, "path": self.path, "diverged_runs": self.diverged,
                "accuracy": dict(zip(("mean", "std"), self.accuracy())),
                "loss_at": {str(s): dict(zip(("mean", "std"), self.loss_at(s))) for s in checkpoints},
                "runs": [r.__dict__ for r in self.runs]}


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if np.isnan(a).any():
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def split(data, test_fraction: float = 0.2) -> tuple[dict, dict]:
    """(train, test) dicts of arrays: ``<key>_test`` arrays when the data has them, else the
    last ``test_fraction`` of a seeded shuffle of every array."""
    arrays, source = read_arrays(data)
    tests = {k[: -len("_test")]: v for k, v in arrays.items() if k.endswith("_test")}
    if tests:
        return {k: v for k, v in arrays.items() if not k.endswith("_test")}, tests
    if not 0 < test_fraction < 1:
        raise OnnxInitError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    sizes = {len(v) for v in arrays.values() if np.ndim(v)}
    if len(sizes) != 1:
        raise OnnxInitError(f"{source}: arrays have different sample counts {sorted(sizes)}")
    n = sizes.pop()
    held = int(round(n * test_fraction))
    if held < 1 or held >= n:
        raise OnnxInitError(f"{source}: {n} samples are too few to hold out {test_fraction:g} of them")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return ({k: v[order[:-held]] for k, v in arrays.items()}, {k: v[order[-held:]] for k, v in arrays.items()})


def checkpoints(steps: int) -> list[int]:
    """The steps the table reports: the first, a quarter, half, and the last."""
    return sorted({1, max(1, steps // 4), max(1, steps // 2), steps})


def compare(models, data, steps: int = 200, batch: int = 64, lr: float = 0.01, optimizer: str = "sgd",
            seeds: int = 3, labels: str = "y", input_map: dict | None = None, output_name: str | None = None,
            loss: str = "ce", test_fraction: float = 0.2, device: str = "auto", progress=None) -> list[ModelRuns]:
    """Train every model in ``models`` (paths or ModelProtos) ``seeds`` times; see the module doc.
    ``input_map`` maps data keys to model input names. ``progress(model, seed, step, loss)``."""
    if steps < 1 or batch < 1 or seeds < 1:
        raise OnnxInitError("steps, batch and seeds must be at least 1")
    train_data, test_data = split(data, test_fraction)
    results = []
    for i, item in enumerate(models):
        model, source = _as_model(item)
        name = Path(source).stem if source != "<model>" else f"model{i}"
        runs = ModelRuns(name, source)
        for seed in range(seeds):
            start = time.perf_counter()
            step_hook = None if progress is None else (lambda step, value, s=seed: progress(name, s, step, value))
            result = train(model, train_data, steps, batch, lr, optimizer, seed=seed, on_step=step_hook, loss=loss,
                           labels=labels, input_map=input_map, output_name=output_name, eval_data=test_data,
                           device=device)
            runs.runs.append(Run(seed, [float(v) for v in result.losses], result.accuracy, result.diverged,
                                 time.perf_counter() - start))
        results.append(runs)
    return results


def _number(value: float, digits: int = 4) -> str:
    """Fixed point while it fits the column, else scientific (a loss on its way to diverging)."""
    return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.2e}"


def table(results: list[ModelRuns], steps: int) -> str:
    """Loss at the checkpoints and final held-out accuracy, mean ± std over seeds."""
    marks = checkpoints(steps)
    width = max(12, *(len(r.name) for r in results))
    head = f"{'model':<{width}}" + "".join(f"{'loss@' + str(s):>17}" for s in marks) + f"{'accuracy':>17}  diverged"
    lines = [head]
    for r in results:
        cells = []
        for s in marks:
            mean, std = r.loss_at(s)
            cells.append(f"{'diverged':>17}" if np.isnan(mean) else f"{_number(mean):>9} ± {_number(std, 3):<5}")
        mean, std = r.accuracy()
        acc = f"{'-':>17}" if np.isnan(mean) else f"{mean:>9.4f} ± {std:<5.3f}"
        lines.append(f"{r.name:<{width}}" + "".join(cells) + acc + f"  {r.diverged}/{len(r.runs)}")
    lines.append(f"(loss: mean over the 10 steps ending at the step; mean ± std over {len(results[0].runs)} seeds)")
    return "\n".join(lines)


def plot(results: list[ModelRuns], path) -> None:
    """Loss curves (mean over seeds, band from min to max) on a log axis, as a PNG written atomically."""
    from .plot import _pyplot, _save
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        length = min(len(run.losses) for run in r.runs)
        if length == 0:
            continue
        curves = np.array([run.losses[:length] for run in r.runs])
        steps = np.arange(1, length + 1)
        line, = ax.plot(steps, curves.mean(axis=0), label=r.name + (" (diverged)" if r.diverged else ""))
        ax.fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
