"""Effect of keeping few-tap (depthwise) conv outputs non-Gaussian, on whole networks.

For each model and seed: AutoInit with the output of depthwise-like convs (weighted.FEW_TAPS,
FEW_CHANNELS) taken for Gaussian (the baseline, FEW_TAPS = 0) and with its skewness and
kurtosis kept (the default),
in the same process; then ``inspect --measure`` on N(0, 1) input. Prints, per run, the weighted
layers whose measured variance is in [0.5, 2] and the model output's variance.

    .venv/bin/python bench/few_taps_effect.py MODEL.onnx [MODEL.onnx ...] [--seeds 3] [--batch 16]

Models: e.g. torchvision efficientnet_b0 / mobilenet_v3_large exported in inference mode at
224x224 (bench/fullsize_exports.py export --image-size 224 --models efficientnet_b0_eval,...).
"""
from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path

import onnxinit
from onnxinit.api import save_model
from onnxinit.inspect import inspect_model

weighted_kind = importlib.import_module("onnxinit.kinds.weighted")


def run(model: Path, seed: int, batch: int, few_taps: int, folder: Path) -> tuple[int, int, float]:
    weighted_kind.FEW_TAPS = few_taps
    out = folder / f"{model.stem}.{seed}.{few_taps}.onnx"
    save_model(onnxinit.autoinit(model, seed=seed), out)
    result = inspect_model(out, measure_signal=True, batch=batch)
    measured = [r.measured[1] for r in result.rows if r.weighted and r.measured]
    outputs = list(result.summary_dict()["output_variance"].values())
    return len(measured), sum(0.5 <= v <= 2 for v in measured), float(outputs[0]) if outputs else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    default = weighted_kind.FEW_TAPS
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            totals = {}
            for label, few_taps in (("gaussian", 0), ("shaped", default)):
                for seed in range(args.seeds):
                    layers, in_band, output = run(model, seed, args.batch, few_taps, Path(folder))
                    totals.setdefault(label, []).append(in_band)
                    print(f"{model.stem} seed {seed} {label:8s}: {in_band}/{layers} in [0.5, 2], output var {output:.3g}",
                          flush=True)
            print(f"{model.stem}: mean in band, gaussian {sum(totals['gaussian']) / args.seeds:.1f}, "
                  f"shaped {sum(totals['shaped']) / args.seeds:.1f}")


if __name__ == "__main__":
    main()
