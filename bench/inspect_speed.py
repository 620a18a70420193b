"""Wall time of `onnxinit inspect --measure` against one ONNX Runtime forward pass plus load.

    python bench/inspect_speed.py [--batch 16]

Baseline, in the same process on the same synthetic ResNet-50 (bench/synthetic.py):
onnx.load, an ONNX Runtime session, one forward pass on N(0,1) input. The
ratio inspect / baseline is printed. Target (issue 4): <= 2.
"""
import argparse
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.onnx"
        build_resnet50(path)
        start = time.perf_counter()
        baseline(path, args.batch)
        base = time.perf_counter() - start
        start = time.perf_counter()
        result = inspect_model(path, measure_signal=True, batch=args.batch)
        ours = time.perf_counter() - start
    print(f"ResNet-50 synthetic, batch {args.batch}, {len(result.rows)} rows measured")
    print(f"load + one ONNX Runtime forward: {base:.2f} s")
    print(f"onnxinit inspect --measure:      {ours:.2f} s")
    print(f"ratio: {ours / base:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
