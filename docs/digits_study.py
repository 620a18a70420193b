"""Initializers compared by training on scikit-learn's digits, with onnxinit's own machinery.

    .venv-train/bin/python docs/digits_study.py

Writes docs/digits_study.md (settings, tables, what was measured) and one loss-curve PNG per
network (docs/digits_*.png), each atomically (temp file in docs/, then rename).

* Study 1 (issue 7): a ResNet-20 without normalization on the 1x8x8 digits and three
  30-layer MLPs (ReLU, tanh, SELU), each from torch-default, he-normal, glorot-normal,
  LSUV, AutoInit and AutoInit+NIO.
* Study 2 (issue 5): the deep networks' default init vs AutoInit vs AutoInit+NIO (rows of study 1).
* Study 3 (issue 6): a weight-normalized ResNet-32 (no BatchNorm) from PyTorch's default
  init vs wninit.

Every model is trained by onnxinit.compare.compare (ONNX Runtime's training build, CPU), plain
SGD, the same steps, batch and learning rate for every initializer of a network. Seed s
(0, 1, 2) draws every initializer with seed s (LSUV's orthogonal start, AutoInit, NIO's
batches, torch-default, the PyTorch export of study 3) and fixes the minibatch order (the
training rows are shuffled with seed s before compare draws its batches). torch builds and
exports the networks here only; the package never imports it.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))

import onnxinit  # noqa: E402
from onnxinit.api import autoinit  # noqa: E402
from onnxinit.classic import init as classic_init  # noqa: E402
from onnxinit.compare import ModelRuns, Run, compare, plot, table  # noqa: E402
from onnxinit.lsuv import lsuv  # noqa: E402
from onnxinit.model_io import save_model  # noqa: E402
from onnxinit.wn_api import wninit  # noqa: E402

COMMAND = ".venv-train/bin/python docs/digits_study.py"
SEEDS = 3
BATCH = 64
OPTIMIZER = "sgd"
TEST_FRACTION = 0.2
SPLIT_SEED = 0
DEVICE = "cpu"
LSUV_BATCH = 256
# NIO: few iterations to keep the run short; its learning rate raised from the default 0.003 so
# that the coefficients can move at all in so few Adam steps (each step moves one by at most ~lr)
NIO = {"iters": 10, "batch": 64, "lr": 0.01, "gamma": 10.0, "variant": "authors", "differences": "forward"}
OPSET = 17


# --- networks ------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv-ReLU-conv plus the shortcut (1x1 projection where the shape changes), ReLU; no normalization."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2) on 1x8x8 inputs: 3 stages of n basic blocks, 16/32/64 channels."""

    def __init__(self, n=3, widths=(16, 32, 64), n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, 1, 1)
        blocks, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def deep_mlp(activation, depth=30, width=128, n_in=64, n_out=10):
    """``depth`` Linear layers: 64 -> width -> ... -> width -> 10, ``activation`` after all but the last."""
    layers = [nn.Linear(n_in, width), activation()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), activation()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def weight_normed(model):
    """PyTorch's weight_norm (w = g v / ||v||, dim 0) on every Conv2d and Linear."""
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.utils.parametrizations.weight_norm(module)
    return model


@dataclass
class Network:
    key: str
    title: str
    build: object           # () -> nn.Module
    shape: tuple            # one sample's input shape
    training_mode: bool     # export in training mode (keeps weight norm in the graph)
    steps: int
    lr: float


STUDY1 = [
    Network("resnet20_nobn", "ResNet-20 without normalization (3 stages x 3 basic blocks, 16/32/64 channels)",
            lambda: DigitsResNet(n=3), (1, 8, 8), False, 80, 0.02),
    Network("mlp30_relu", "30-layer MLP, width 128, ReLU", lambda: deep_mlp(nn.ReLU), (64,), False, 250, 0.01),
    Network("mlp30_tanh", "30-layer MLP, width 128, tanh", lambda: deep_mlp(nn.Tanh), (64,), False, 250, 0.01),
    Network("mlp30_selu", "30-layer MLP, width 128, SELU", lambda: deep_mlp(nn.SELU), (64,), False, 250, 0.01),
]
STUDY3 = Network("resnet32_wn", "weight-normalized ResNet-32 without BatchNorm (3 stages x 5 basic blocks, "
                 "16/32/64 channels, weight_norm on every conv and linear)",
                 lambda: weight_normed(DigitsResNet(n=5)), (1, 8, 8), True, 80, 0.02)
INITS = ["torch-default", "he-normal", "glorot-normal", "lsuv", "autoinit", "autoinit+nio"]
STUDY2_ROWS = ["torch-default", "autoinit", "autoinit+nio"]


def export(net: Network, path: Path, seed: int) -> None:
    """The network as PyTorch builds it under ``seed``, exported with a dynamic batch axis."""
    torch.manual_seed(seed)
    model = net.build()
    model.train(net.training_mode)
    mode = torch.onnx.TrainingMode.TRAINING if net.training_mode else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(2, *net.shape), str(path), dynamo=False, training=mode,
                          do_constant_folding=not net.training_mode, opset_version=OPSET,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


# --- data ----------------------------------------------------------------------
def digits():
    """(x_train, y_train, x_test, y_test): a seeded 80/20 split, pixels standardized with the
    training rows' mean and std (pixels constant there stay 0)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x, y = d.data.astype(np.float64), d.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    held = int(round(len(y) * TEST_FRACTION))
    train, test = order[:-held], order[-held:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    x = ((x - mean) / std).astype(np.float32)
    return x[train], y[train], x[test], y[test]


def seeded_data(data, shape, seed):
    """compare's data for seed ``seed``: the training rows shuffled with the seed (so its batch
    order differs per seed), the fixed test rows under ``x_test`` / ``y_test``."""
    x_train, y_train, x_test, y_test = data
    order = np.random.default_rng(1000 + seed).permutation(len(y_train))
    return {"x": x_train[order].reshape(-1, *shape), "y": y_train[order],
            "x_test": x_test.reshape(-1, *shape), "y_test": y_test}


# --- initializers ----------------------------------------------------------------
def initialize(name, source: Path, data: dict, seed: int, work: Path):
    """(ModelProto, notes dict) for initializer ``name`` on the exported model ``source``."""
    if name in ("torch-default", "he-normal", "glorot-normal"):
        return classic_init(source, scheme=name, seed=seed), {}
    if name == "lsuv":
        batch = work / "lsuv_batch.npz"
        np.savez(batch, x=data["x"][:LSUV_BATCH])
        return lsuv(source, batch, seed=seed, input_map={"input": "x"}, batch=LSUV_BATCH, device=DEVICE), {}
    if name == "autoinit":
        return autoinit(source, seed=seed), {}
    if name == "autoinit+nio":
        from onnxinit.nio import nio
        model, report = nio(source, {"x": data["x"], "y": data["y"]}, input_map={"x": "input"}, labels="y",
                            iters=NIO["iters"], batch=NIO["batch"], lr=NIO["lr"], gamma=NIO["gamma"],
                            variant=NIO["variant"], differences=NIO["differences"], seed=seed, start="autoinit",
                            device=DEVICE)
        coefficients = list(report["coefficients"].values())
        return model, {"before": report["before"], "after": report["after"], "repair_steps": report["repair_steps"],
                       "stopped": report["stopped"], "coef_min": min(coefficients), "coef_max": max(coefficients),
                       "constrained_steps": sum(h["constrained"] for h in report["history"]),
                       "iterations": len(report["history"])}
    if name == "pytorch-default":
        return None, {}
    if name == "wninit":
        model, result = wninit(source, seed=seed, return_report=True)
        return model, {"layers": len(result.layers), "through_wn": sum(1 for la in result.layers if la.weight_norm),
                       "blocks": len(result.blocks), "stages": len(result.stages), "warnings": list(result.warnings)}
    raise ValueError(name)


def run_network(net: Network, inits, data, work: Path, log: list, notes: dict, init_seconds: dict):
    """Train every initializer of ``inits`` on ``net`` once per seed; {init: ModelRuns} (skipped ones absent)."""
    merged = {name: ModelRuns(name, name) for name in inits}
    failed = set()
    for seed in range(SEEDS):
        folder = work / f"{net.key}_seed{seed}"
        folder.mkdir()
        source = folder / "exported.onnx"
        export(net, source, seed)
        seed_data = seeded_data(data, net.shape, seed)
        paths = []
        for name in inits:
            if name in failed:
                continue
            start = time.perf_counter()
            try:
                model, info = initialize(name, source, seed_data, seed, folder)
            except Exception as exc:  # noqa: BLE001 - a failing initializer is reported and skipped
                text = f"{name} failed on {net.key} (seed {seed}): {type(exc).__name__}: {str(exc).splitlines()[0]}"
                print(f"note: {text}; its rows are skipped", flush=True)
                log.append(text)
                failed.add(name)
                continue
            init_seconds.setdefault((net.key, name), []).append(time.perf_counter() - start)
            if info:
                notes.setdefault((net.key, name), []).append({"seed": seed, **info})
            path = folder / f"{name}.onnx"
            if model is None:
                shutil.copyfile(source, path)
            else:
                save_model(model, path)
            paths.append(path)
        start = time.perf_counter()
        results = compare(paths, seed_data, steps=net.steps, batch=BATCH, lr=net.lr, optimizer=OPTIMIZER,
                          seeds=1, labels="y", input_map={"x": "input"}, device=DEVICE)
        for r in results:
            run = r.runs[0]
            merged[r.name].runs.append(Run(seed, run.losses, run.accuracy, run.diverged, run.seconds))
        print(f"  {net.key} seed {seed}: {len(paths)} models trained in {time.perf_counter() - start:.0f} s: "
              + ", ".join(f"{r.name} {_acc_text(r.runs[0])}" for r in results), flush=True)
    return {name: runs for name, runs in merged.items() if name not in failed and len(runs.runs) == SEEDS}


def _acc_text(run: Run) -> str:
    return "diverged" if run.diverged else f"{run.accuracy:.3f}"


# --- summaries -------------------------------------------------------------------
def accuracy_cell(runs: ModelRuns) -> str:
    finished = [r.accuracy for r in runs.runs if not r.diverged and r.accuracy is not None]
    if not finished:
        return f"diverged {runs.diverged}/{len(runs.runs)}"
    text = f"{np.mean(finished):.3f} ± {np.std(finished):.3f}"
    return text if len(finished) == len(runs.runs) else f"{text} ({runs.diverged}/{len(runs.runs)} diverged)"


def final_loss(runs: ModelRuns, steps: int) -> float:
    return runs.loss_at(steps)[0]


def compare_two(a: ModelRuns, b: ModelRuns, steps: int) -> str:
    """A plain sentence on ``b`` against ``a``: accuracy and final loss, with the seed spread."""
    if a.diverged or b.diverged:
        return (f"{b.name}: {accuracy_cell(b)} vs {a.name}: {accuracy_cell(a)} (diverged runs present, "
                "no difference computed)")
    (ma, sa), (mb, sb) = a.accuracy(), b.accuracy()
    la, lb = final_loss(a, steps), final_loss(b, steps)
    diff = mb - ma
    spread = max(sa, sb)
    if abs(diff) <= spread or abs(diff) < 0.005:
        verdict = "within the spread over seeds, so no clear difference"
    else:
        verdict = "higher" if diff > 0 else "lower"
        verdict = f"{verdict} by more than the spread over seeds"
    return (f"{b.name} reaches {mb:.3f} ± {sb:.3f} held-out accuracy against {a.name}'s {ma:.3f} ± {sa:.3f} "
            f"({diff:+.3f}, {verdict}); final training loss {lb:.3f} vs {la:.3f}")


def ranking(results: dict) -> str:
    """Initializers by mean final accuracy (diverged ones last)."""
    order = sorted(results.values(), key=lambda r: (r.diverged > 0, -np.nan_to_num(r.accuracy()[0], nan=-1)))
    return ", ".join(f"{r.name} {accuracy_cell(r)}" for r in order)


def fmt(value) -> str:
    return f"{value:.3g}"


def nio_uniform(notes, key):
    """The common coefficient when NIO moved every coefficient alike on every seed, else None."""
    rows = notes.get((key, "autoinit+nio"), [])
    if rows and all(abs(n["coef_max"] - n["coef_min"]) < 1e-6 for n in rows):
        return [n["coef_min"] for n in rows]
    return None


def nio_lines(notes, key) -> list:
    rows = notes.get((key, "autoinit+nio"), [])
    if not rows:
        return []
    lines = ["", "NIO on this network (per seed; B-GC / B-GN / mean sub-batch gradient norm on NIO's evaluation "
             "batch, before -> after; coefficient range after):", "",
             "| seed | B-GC | B-GN | mean norm | coefficients | constrained steps | repair steps | stopped early |",
             "|---|---|---|---|---|---|---|---|"]
    for n in rows:
        b, a = n["before"], n["after"]
        lines.append(f"| {n['seed']} | {fmt(b['gc'])} -> {fmt(a['gc'])} | {fmt(b['gn'])} -> {fmt(a['gn'])} | "
                     f"{fmt(b['mean_norm'])} -> {fmt(a['mean_norm'])} | {n['coef_min']:.3f} .. {n['coef_max']:.3f} | "
                     f"{n['constrained_steps']}/{n['iterations']} | {n['repair_steps']} | {n['stopped'] or 'no'} |")
    common = nio_uniform(notes, key)
    if common is not None:
        if all(abs(c - 1.0) < 1e-6 for c in common):
            lines += ["", "On every seed NIO ended with every coefficient at 1.000: the `autoinit+nio` model is the "
                      "`autoinit` model up to float32 rounding (its iterations alternated between ascending "
                      "GC + GN and the norm constraint and came back to the start)."]
        else:
            lines += ["", "On every seed NIO moved all coefficients by the same amount (" +
                      ", ".join(f"{c:.3f}" for c in common) + " per seed): a uniform rescale of every weight "
                      "tensor (what NIO's Adam steps on coefficient gradients clipped to ±1 give when every "
                      "coefficient's gradient is beyond the clip with the same sign)."]
    return lines


def settings_table(nets) -> list:
    lines = ["| network | steps | batch | optimizer | learning rate | seeds | exported in |", "|---|---|---|---|---|---|---|"]
    for net in nets:
        lines.append(f"| {net.key}: {net.title} | {net.steps} | {BATCH} | {OPTIMIZER} (plain, no momentum) | "
                     f"{net.lr} | {SEEDS} | {'training' if net.training_mode else 'eval'} mode |")
    return lines


def init_time_table(init_seconds, nets, inits) -> list:
    lines = ["| network | " + " | ".join(inits) + " |", "|---|" + "---|" * len(inits)]
    for net in nets:
        cells = []
        for name in inits:
            t = init_seconds.get((net.key, name))
            cells.append(f"{np.mean(t):.2f}" if t else "-")
        lines.append(f"| {net.key} | " + " | ".join(cells) + " |")
    return lines


# --- the document ---------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".digits-study-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def document(study1, study3, notes, init_seconds, failures, data, seconds, left) -> str:
    import onnxruntime
    x_train, _, x_test, _ = data
    out = [
        "# Initializers compared by training on scikit-learn's digits",
        "",
        "Produced by exactly this command, from the repository root (it also writes the PNGs below):",
        "",
        f"    {COMMAND}",
        "",
        f"Run time: {seconds / 60:.1f} min on a shared 2-core CPU machine (onnxinit {onnxinit.__version__}, "
        f"onnxruntime {onnxruntime.__version__} (training build), torch {torch.__version__} for building and "
        f"exporting the networks only, Python {platform.python_version()}).",
        "",
        "## Setup",
        "",
        f"* Data: `sklearn.datasets.load_digits` (1797 8x8 images, 10 classes, no download). A fixed split "
        f"(seed {SPLIT_SEED}): {len(x_train)} training rows, {len(x_test)} held-out rows. Every pixel standardized "
        "with the training rows' mean and std (pixels constant there stay 0). The MLPs see 64 features, the "
        "ResNets 1x8x8 images.",
        "* Training: `onnxinit.compare.compare` (ONNX Runtime training build, CPU): the mean cross-entropy, plain SGD, "
        "minibatches drawn without replacement, reshuffled each epoch. Settings are the same for every initializer "
        "of a network:",
        "",
        *settings_table(STUDY1 + [STUDY3]),
        "",
        f"* Seeds: seed s in 0..{SEEDS - 1} draws every initializer with seed s (the torch-default/he/glorot draws, "
        "LSUV's orthogonal start, AutoInit, NIO's AutoInit start and batches, PyTorch's own init in study 3) and "
        "fixes the minibatch order (the training rows are shuffled with seed s before compare draws its batches; "
        "compare is called with `seeds=1` once per seed and the runs are pooled). The test rows never change.",
        "* Reported: held-out accuracy after the last step, mean ± std over the seeds; training loss at fixed steps "
        "(the first, a quarter, half, the last; each the mean over the 10 steps ending there), mean ± std, from "
        "`onnxinit.compare.table`. A run whose loss or gradients become NaN or infinite stops and counts as "
        "diverged (its accuracy and the losses after it are shown as diverged, never averaged in). In the "
        "sentences under each table, a difference is called \"within the spread over seeds\" when it is no "
        "larger than the larger of the two standard deviations (or below 0.005).",
        "* Initializers: `torch-default`, `he-normal`, `glorot-normal` are `onnxinit.classic.init(model, scheme=...)` "
        "(each scheme's own gain, biases 0 except torch-default's U(±1/√fan_in)); `lsuv` is "
        f"`onnxinit.lsuv.lsuv` on the first {LSUV_BATCH} (seed-shuffled) training rows; `autoinit` is "
        "`onnxinit.autoinit(model, seed=s)` (analytic, residual sums as independent); `autoinit+nio` is "
        f"`onnxinit.nio.nio(..., start=\"autoinit\", iters={NIO['iters']}, batch={NIO['batch']}, lr={NIO['lr']}, "
        f"gamma={NIO['gamma']}, variant=\"{NIO['variant']}\", differences=\"{NIO['differences']}\")` on the "
        "training rows: NIO started from the same AutoInit draw as the `autoinit` row. "
        f"{NIO['iters']} iterations on batches of {NIO['batch']} is far fewer than the paper's (kept short for "
        "time; forward differences for the same reason), and NIO's learning rate was raised from the default "
        f"0.003 to {NIO['lr']} so that the per-tensor coefficients can move at all in that many Adam steps.",
        "* The learning rates were picked from a short single-seed sweep (0.01, 0.03, 0.1 on the MLPs) made before "
        "this run and not part of it: 0.01 let most initializers of every MLP train without diverging; the "
        "ranking of the initializers changed with the learning rate there, so the tables below are a comparison "
        "at one untuned setting, not at each initializer's best.",
        "",
        "Mean time per initializer call (s; NIO includes its AutoInit start):",
        "",
        *init_time_table(init_seconds, STUDY1, INITS),
    ]
    if failures:
        out += ["", "## Failures", "", "These initializers raised and their rows are left out:", ""]
        out += [f"* {text}" for text in failures]

    # study 1
    out += ["", "## Study 1 (issue 7): six initializers on four deep networks without normalization", "",
            "Held-out accuracy after training, mean ± std over seeds:", "",
            "| initializer | " + " | ".join(net.key for net in STUDY1) + " |",
            "|---|" + "---|" * len(STUDY1)]
    for name in INITS:
        cells = [accuracy_cell(study1[net.key][name]) if name in study1[net.key] else "skipped" for net in STUDY1]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    for net in STUDY1:
        results = study1[net.key]
        rows = [results[n] for n in INITS if n in results]
        out += ["", f"### {net.key}: {net.title}", "",
                f"{net.steps} steps, batch {BATCH}, SGD lr {net.lr}, {SEEDS} seeds.", "", "```",
                table(rows, net.steps), "```", "", f"![loss curves, {net.key}](digits_{net.key}.png)"]
        out += plot_caption(left.get(net.key))
        if "autoinit+nio" in results:
            out += nio_lines(notes, net.key)
        out += ["", "What was measured: " + study1_paragraph(net, results)]

    # study 2
    out += ["", "## Study 2 (issue 5): default init vs AutoInit vs AutoInit+NIO on the deep networks", "",
            "No extra training: these are the `torch-default`, `autoinit` and `autoinit+nio` rows of study 1 for the "
            "30-layer ReLU MLP and the ResNet-20 without normalization (same runs, same seeds), shown alone with "
            "their own loss plots. `torch-default` is PyTorch's layer default (what the exported network holds), "
            "redrawn by `onnxinit.classic.init(scheme=\"torch-default\")`."]
    for key in ("mlp30_relu", "resnet20_nobn"):
        net = next(n for n in STUDY1 if n.key == key)
        rows = [study1[key][n] for n in STUDY2_ROWS if n in study1[key]]
        out += ["", f"### {key}", "", "```", table(rows, net.steps), "```", "",
                f"![loss curves, study 2, {key}](digits_study2_{key}.png)"]
        out += plot_caption(left.get(f"study2_{key}"))
        out += ["", "What was measured: " + study2_paragraph(net, study1[key])]

    # study 3
    net = STUDY3
    rows = list(study3.values())
    out += ["", "## Study 3 (issue 6): weight-normalized ResNet-32, PyTorch default vs wninit", "",
            f"{net.title}; exported in training mode so `w = g v / ||v||` stays in the graph (wninit writes v and g). "
            "`pytorch-default` is the exported network as PyTorch initialized it (torch.manual_seed(s); weight_norm "
            "starts with g = ||v||, so w is PyTorch's layer default); `wninit` is `onnxinit.wn_api.wninit(model, "
            f"seed=s)`. {net.steps} steps, batch {BATCH}, SGD lr {net.lr}, {SEEDS} seeds.", "", "```",
            table(rows, net.steps) if rows else "(no rows)", "```", "", f"![loss curves, {net.key}](digits_{net.key}.png)"]
    out += plot_caption(left.get(net.key))
    wn = notes.get((net.key, "wninit"), [])
    if wn:
        n = wn[0]
        out += ["", f"wninit found {n['stages']} stages, {n['blocks']} residual blocks and {n['layers']} weighted layers, "
                f"{n['through_wn']} of them written through the weight norm (v and g)"
                + (f"; warnings: {'; '.join(n['warnings'])}" if n["warnings"] else "; no warnings") + "."]
    out += ["", "What was measured: " + study3_paragraph(net, study3), ""]
    return "\n".join(out)


def study1_paragraph(net, results) -> str:
    parts = [f"held-out accuracy of the {net.title} after {net.steps} SGD steps from each initializer, and its "
             f"training loss along the way. By mean accuracy: {ranking(results)}."]
    if "autoinit" in results:
        base = results["autoinit"]
        for other in ("torch-default", "lsuv", "autoinit+nio"):
            if other in results:
                parts.append(compare_two(base, results[other], net.steps) + ".")
    if "autoinit+nio" not in results:
        parts.append("NIO did not run here (see Failures).")
    finished = [r for r in results.values() if not r.diverged]
    if finished:
        lowest = min(finished, key=lambda r: final_loss(r, net.steps))
        best = max(finished, key=lambda r: r.accuracy()[0])
        gap = best.accuracy()[0] - lowest.accuracy()[0]
        if lowest is not best and gap > max(0.005, best.accuracy()[1], lowest.accuracy()[1]):
            parts.append(f"The lowest final training loss ({lowest.name}, {final_loss(lowest, net.steps):.3f}) and "
                         f"the best held-out accuracy ({best.name}) come from different initializers here "
                         f"({gap:.3f} apart in accuracy, more than the spread): fitting the training rows faster "
                         "did not by itself give the best held-out accuracy.")
    parts.append("Three seeds give a rough spread only; differences inside it are not evidence either way.")
    return " ".join(parts)


def study2_paragraph(net, results) -> str:
    parts = [f"the same {net.steps}-step SGD runs of study 1 on the {net.title}."]
    if "torch-default" in results and "autoinit" in results:
        parts.append(compare_two(results["torch-default"], results["autoinit"], net.steps) + ".")
    if "autoinit" in results and "autoinit+nio" in results:
        parts.append(compare_two(results["autoinit"], results["autoinit+nio"], net.steps) + ".")
    elif "autoinit+nio" not in results:
        parts.append("NIO did not run here (see Failures).")
    return " ".join(parts)


def study3_paragraph(net, results) -> str:
    if "pytorch-default" in results and "wninit" in results:
        body = compare_two(results["pytorch-default"], results["wninit"], net.steps) + "."
    else:
        body = "one of the two initializers failed (see Failures); nothing to compare."
    return (f"held-out accuracy and training loss of the {net.key} after {net.steps} SGD steps from PyTorch's default "
            f"init and from wninit. {body} This is a short training check on a small dataset, not a claim about "
            "final accuracy at convergence.")


PLOT_CEILING = 1e3   # a row whose curve passes this loss is left out of its plot (it would flatten the others)


def plotted(rows) -> tuple[list, list]:
    """(rows to draw, names left out): rows whose losses exceed PLOT_CEILING are left out."""
    keep, out = [], []
    for r in rows:
        peak = max((max(run.losses, default=0.0) for run in r.runs), default=0.0)
        (out if peak > PLOT_CEILING else keep).append(r)
    return keep, [r.name for r in out]


def plot_file(rows, path: Path) -> list:
    """onnxinit.compare.plot (atomic; readable by all like the other docs); returns the rows left out."""
    keep, left_out = plotted(rows)
    plot(keep, path)
    os.chmod(path, 0o644)
    return left_out


def plot_caption(left_out) -> list:
    if not left_out:
        return []
    return ["", f"Left out of the plot: {', '.join(left_out)} (a training loss above {PLOT_CEILING:g} on the way "
            "to diverging; drawn, it would flatten every other curve). The table above shows it."]


def main():
    started = time.perf_counter()
    torch.set_num_threads(1)
    data = digits()
    notes, init_seconds, failures = {}, {}, []
    study1 = {}
    with tempfile.TemporaryDirectory(prefix="digits-study-") as tmp:
        work = Path(tmp)
        for net in STUDY1:
            print(f"{net.key}: {net.title}", flush=True)
            study1[net.key] = run_network(net, INITS, data, work, failures, notes, init_seconds)
        print(f"{STUDY3.key}: {STUDY3.title}", flush=True)
        study3 = run_network(STUDY3, ["pytorch-default", "wninit"], data, work, failures, notes, init_seconds)
    left = {}
    for net in STUDY1:
        rows = [study1[net.key][n] for n in INITS if n in study1[net.key]]
        left[net.key] = plot_file(rows, DOCS / f"digits_{net.key}.png")
    for key in ("mlp30_relu", "resnet20_nobn"):
        left[f"study2_{key}"] = plot_file([study1[key][n] for n in STUDY2_ROWS if n in study1[key]],
                                          DOCS / f"digits_study2_{key}.png")
    if study3:
        left[STUDY3.key] = plot_file(list(study3.values()), DOCS / f"digits_{STUDY3.key}.png")
    seconds = time.perf_counter() - started
    write_atomic(DOCS / "digits_study.md", document(study1, study3, notes, init_seconds, failures, data, seconds,
                                                            left))
    for net in STUDY1:
        print(table([study1[net.key][n] for n in INITS if n in study1[net.key]], net.steps))
    if study3:
        print(table(list(study3.values()), STUDY3.steps))
    print(f"docs/digits_study.md written; {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
