"""onnxinit compare: ONNX Runtime training against the same training in PyTorch (the oracle),
on scikit-learn's digits."""
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ALL_SAMPLES
from onnxinit import autoinit
from onnxinit.cli import cli
from onnxinit.compare import checkpoints, compare, split, table
from onnxinit.export_weights import export_weights
from onnxinit.model_io import save_model

SAMPLE = {p.stem: p for p in ALL_SAMPLES}
pytestmark = pytest.mark.training



def _torch_run(module, data_path, steps, batch, lr, seed):
    """The loop of train/loop.py in PyTorch: same split, same batch order, plain SGD on mean CE."""
    import torch
    torch.set_num_threads(1)   # two threads on two busy cores only contend
    train, test = split(data_path)
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"]).long()
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    order, cursor, losses = rng.permutation(len(y)), 0, []
    for _ in range(steps):
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(y)), 0
        index = torch.from_numpy(order[cursor:cursor + batch])
        cursor += batch
        loss = torch.nn.functional.cross_entropy(module(x[index]), y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        accuracy = float((module(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())
    return losses, accuracy


def _module_with_weights(model, folder):
    import torch
    path = Path(__file__).resolve().parent.parent / "samples" / "make_samples.py"
    spec = importlib.util.spec_from_file_location("make_samples", path)
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    module, *_ = samples.deep_relu_mlp()
    export_weights(model, folder / "w.npz", names="source")
    arrays = np.load(folder / "w.npz")
    module.load_state_dict({k: torch.from_numpy(arrays[k].copy()) for k in arrays.files if k != "__mapping__"})
    return module


def test_compare_matches_pytorch_training(digits, tmp_path):
    """200 steps of the 20-layer ReLU MLP sample from its PyTorch init and from autoinit, 3 seeds:
    the same table as PyTorch's training of the same model, init and batches, within the seed
    spread, and step by step over the first steps."""
    pytest.importorskip("torch")
    auto = tmp_path / "auto.onnx"
    save_model(autoinit(SAMPLE["mlp_relu_deep"], seed=0), auto)
    start = time.perf_counter()
    results = compare([SAMPLE["mlp_relu_deep"], auto], digits, steps=200, batch=64, lr=0.01, seeds=3)
    seconds = time.perf_counter() - start
    print(table(results, 200))
    print(f"compare: {seconds:.1f} s")
    assert seconds < 120
    import onnx
    for result, path in zip(results, [SAMPLE["mlp_relu_deep"], auto]):
        torch_losses, torch_acc = {step: [] for step in checkpoints(200)}, []
        for run in result.runs:
            losses, acc = _torch_run(_module_with_weights(onnx.load(path), tmp_path), digits, 200, 64, 0.01, run.seed)
            # step for step while float rounding has not yet compounded through 20 layers
            np.testing.assert_allclose(run.losses[:8], losses[:8], rtol=1e-3, atol=1e-4)
            for step in torch_losses:   # as the table reports them: the mean of the 10 steps ending there
                torch_losses[step].append(np.mean(losses[max(0, step - 10):step]))
            torch_acc.append(acc)
        # Past the first steps the two runs of a seed part ways (a 20-layer ReLU net amplifies float
        # rounding; gradients agree to 1e-7 at a given point), so the tables are compared as
        # samples, every column: means within twice the larger seed spread.
        for step, theirs in torch_losses.items():
            mean, std = result.loss_at(step)
            assert abs(mean - np.mean(theirs)) <= 2 * max(std, np.std(theirs), 1e-3), (path.stem, step)
        mean, std = result.accuracy()
        assert abs(mean - np.mean(torch_acc)) <= 2 * max(std, np.std(torch_acc), 1 / 360)
    assert results[1].loss_at(200)[0] < results[0].loss_at(200)[0]   # autoinit trains; the default barely moves


def test_cli_compare_plot_json_and_divergence(digits, tmp_path):
    auto = tmp_path / "auto.onnx"
    save_model(autoinit(SAMPLE["mlp_relu_deep"], seed=1), auto)
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", str(SAMPLE["mlp_relu_deep"]), str(auto), "--data", str(digits),
                                 "--steps", "20", "--seeds", "2", "--optimizer", "adam", "--lr", "0.001",
                                 "--plot", str(tmp_path / "loss.png"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and (tmp_path / "loss.png").stat().st_size > 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [m["name"] for m in report["models"]] == ["mlp_relu_deep", "auto"]
    assert set(report["models"][0]["loss_at"]) == {str(s) for s in checkpoints(20)}
    diverged = runner.invoke(cli, ["compare", str(auto), "--data", str(digits), "--steps", "30", "--seeds", "1",
                                   "--lr", "1e6"])
    assert diverged.exit_code == 0, diverged.output
    assert "1/1" in diverged.output and "diverged" in diverged.output
    bad = runner.invoke(cli, ["compare", str(auto), "--data", str(digits), "--labels", "nope"])
    assert bad.exit_code == 2 and "labels" in bad.output
