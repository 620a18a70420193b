"""Peak memory and time of `onnxinit autoinit` on a large model stored with external data.

    python bench/large_model.py [--gb 3]

Builds a synthetic MLP of a few 8192-wide Gemm layers (ReLU between) totalling about
--gb gigabytes, saved with external data, then runs in fresh processes:
  floor:    load the model with its external data and save it again (external data out)
  autoinit: onnxinit autoinit with external data out
and prints each one's peak RSS and wall time. Issue 8's target: peak <= model size +
largest tensor + 300 MB.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 8192


def build(path: Path, gb: float) -> tuple:
    layers = max(1, int(round(gb * (1 << 30) / (WIDTH * WIDTH * 4))))
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(layers):
        w = numpy_helper.from_array(rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * 0.01, f"w{i}")
        inits.append(w)
        y = f"fc{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [y], name=y, transB=1))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"], name=f"relu{i}"))
            y = f"relu{i}"
        x = y
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data")
    return layers * WIDTH * WIDTH * 4, WIDTH * WIDTH * 4


FLOOR = """
import sys
from onnxinit.model_io import load_model, save_model
save_model(load_model(sys.argv[1]), sys.argv[2], external_data=True)
"""

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run(args) -> tuple:
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=True)
    seconds, kb = out.stdout.split()
    return float(seconds), int(kb) / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "large.onnx"
        size, largest = build(src, args.gb)
        floor_s, floor_mb = run([sys.executable, "-c", FLOOR, str(src), str(Path(tmp) / "floor.onnx")])
        ours_s, ours_mb = run([sys.executable, "-m", "onnxinit.cli", "autoinit", str(src), "-o",
                               str(Path(tmp) / "out.onnx"), "--external-data", "-q"])
    target = size / 2**20 + largest / 2**20 + 300
    print(f"model {size / 2**30:.2f} GB, largest tensor {largest / 2**20:.0f} MB")
    print(f"floor (load + save, external data): {floor_s:.1f} s, peak RSS {floor_mb:.0f} MB")
    print(f"onnxinit autoinit --external-data:  {ours_s:.1f} s, peak RSS {ours_mb:.0f} MB")
    print(f"time ratio {ours_s / floor_s:.2f}x; peak {ours_mb:.0f} MB against the target {target:.0f} MB")


if __name__ == "__main__":
    main()
