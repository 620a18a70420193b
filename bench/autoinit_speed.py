"""Wall time of `onnxinit autoinit` against the floor, on a ResNet-50-sized model.

    python bench/autoinit_speed.py [--repeat 3]

The floor is what any re-initializer must do: onnx.load, draw N(0,1) for
every float initializer, onnx.save. Both are timed in this process on the
same file (best of --repeat); the ratio autoinit / floor is printed.
Target (issue 2): <= 1.3.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import build_resnet50  # noqa: E402

from onnxinit.api import autoinit, save_model  # noqa: E402


def floor(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(rng.standard_normal(tuple(t.dims), dtype=np.float32), t.name))
    onnx.save(model, str(dst))


def run_autoinit(src: Path, dst: Path) -> None:
    save_model(autoinit(src, seed=0), dst)


def best_of(fn, repeat, *args) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "resnet50.onnx", Path(tmp) / "out.onnx"
        model = build_resnet50(src)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        base = best_of(floor, args.repeat, src, dst)
        ours = best_of(run_autoinit, args.repeat, src, dst)
    print(f"ResNet-50 synthetic: {params / 1e6:.1f}M parameters")
    print(f"floor (load + N(0,1) draw + save): {base:.2f} s")
    print(f"onnxinit autoinit:                 {ours:.2f} s")
    print(f"ratio: {ours / base:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
