"""Predicted vs ONNX Runtime-measured statistics at every weighted layer of every sample.

    python bench/predict_vs_measure.py [--seed 1] [--batch 256]

Prints, per sample, the worst relative error of the predicted output variance
and every layer outside the issue's targets (error > 10%, var outside [0.8, 1.25],
|mean| > 0.1).
"""
import argparse
from pathlib import Path

import numpy as np

import onnxinit
from onnxinit.measure import gaussian_feeds, measure

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.onnx"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    for path in SAMPLES:
        model, report = onnxinit.autoinit(path, seed=args.seed, return_report=True)
        outputs = {n.name: n.output[0] for n in model.graph.node}
        measured = measure(model, [outputs[r.node] for r in report.layers],
                           gaussian_feeds(model, args.batch, np.random.default_rng(0)))
        worst, bad = 0.0, []
        for r in report.layers:
            mean, var = measured[outputs[r.node]]
            err = abs(r.output.var - var) / var
            worst = max(worst, err)
            if err > 0.1 or not 0.8 <= var <= 1.25 or abs(mean) > 0.1:
                bad.append(f"    {r.node}: predicted var {r.output.var:.3f}, measured var {var:.3f}, mean {mean:.3f}")
        print(f"{path.stem}: {len(report.layers)} weighted layers, worst variance error {worst:.1%}")
        print("\n".join(bad))


if __name__ == "__main__":
    main()
