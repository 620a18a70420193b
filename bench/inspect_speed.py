"""Wall time of `onnxinit inspect --measure` against one ONNX Runtime forward pass plus load.

    python bench/inspect_speed.py [--batch 16] [--repeat 3]

Baseline, in the same process on the same synthetic ResNet-50 (bench/synthetic.py):
onnx.load, an ONNX Runtime session, one forward pass on N(0,1) input. The
ratio inspect / baseline is printed. Target (issue 4): <= 2.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import build_resnet50  # noqa: E402

from onnxinit.inspect import inspect_model  # noqa: E402


def baseline(path: Path, batch: int) -> None:
    model = onnx.load(str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    session.run(None, {"input": x})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.onnx"
        build_resnet50(path)
        times = {"base": [], "inspect": [], "predict": []}
        for _ in range(args.repeat):   # interleaved, so load on the machine hits each alike
            start = time.perf_counter()
            baseline(path, args.batch)
            times["base"].append(time.perf_counter() - start)
            start = time.perf_counter()
            result = inspect_model(path, measure_signal=True, batch=args.batch)
            times["inspect"].append(time.perf_counter() - start)
            start = time.perf_counter()
            inspect_model(path, measure_signal=False)
            times["predict"].append(time.perf_counter() - start)
    base, ours, predict = (statistics.median(times[k]) for k in ("base", "inspect", "predict"))
    print(f"ResNet-50 synthetic, batch {args.batch}, {len(result.rows)} rows measured; median of {args.repeat}")
    print(f"load + one ONNX Runtime forward:   {base:.2f} s   {[round(t, 2) for t in times['base']]}")
    print(f"onnxinit inspect --measure:        {ours:.2f} s   {[round(t, 2) for t in times['inspect']]}")
    print(f"  of which inspect without measure: {predict:.2f} s (load + propagation)")
    print(f"ratio: {ours / base:.2f}x (target <= 2x)")

if __name__ == "__main__":
    main()
