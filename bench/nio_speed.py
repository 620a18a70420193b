"""Wall time of one NIO iteration with ONNX Runtime against PyTorch double backward (issue 5).

    .venv-train/bin/python bench/nio_speed.py [--repeat 5] [--batch 128] [--subbatches 3] [--two-threads] [--central]
        [--ort-threads N]

Model: samples/resnet20_bn_train.onnx (BatchNorm in training mode), a batch of 128 random
CIFAR-shaped inputs with random labels, D=3 sub-batches (overlap 0.2), every coefficient 1,
the authors' variant unconstrained: J = -(GradCosine over the off-diagonal pairs + sum_d ||g_d||).
One iteration is what NIO computes per step: the sub-batch gradients g_d (one forward with
per-sample weights), the statistics, and dJ/dw_k for one scale coefficient per weight tensor.

    ours:  NioProblem.coefficient_gradient (onnxinit/nio.py) as nio() runs it by default: the
           stacked gradient graph once, then Hessian-vector products by forward differences,
           the D moved gradients from one run of the stacked frozen graph (its reference
           pass shared), ONNX Runtime threads as the package sets them
           (train/graph.session_options: default intra-op count, no spinning), numpy BLAS on
           one thread as nio() runs it.
    torch: tests/torch_oracle.coefficient_gradient (imported, the tests' oracle): the same
           graph re-evaluated in PyTorch, g_d by torch.autograd.grad(create_graph=True) from
           one forward, J, and its gradient wrt the coefficients by double backward;
           torch.set_num_threads(1) (the oracle's setting); --two-threads adds the 2-thread figure
           (on a busy 2-core machine torch's threads contend: about 3x slower, so not by default).
    --central adds ours with central differences (nio(differences="central"): 2D moved
           gradients, relative error ~1e-4 instead of ~3e-4), the package's more exact option.
    --ort-threads N sets ONNX Runtime's intra-op threads (here only, by wrapping the package's
           session options) for a like-for-like comparison with the 1-thread torch figure.

Each side: one warm-up call (ONNX Runtime builds its sessions there), then --repeat calls,
interleaved with the other side's so that load on the shared machine hits both alike; the
median is reported, and the two results are compared (relative difference, cosine) to show
they are the same quantity. The Adam step on the coefficients (microseconds) is left out.

Target (issue 5): ours / torch (1 thread) <= 1.0.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import torch  # noqa: E402
import torch_oracle  # noqa: E402  (sets torch.set_num_threads(1))

from onnxinit.api import single_threaded_blas  # noqa: E402
from onnxinit.nio import NioProblem, subbatch_weights  # noqa: E402
from onnxinit.train import engine as engine_module  # noqa: E402
from onnxinit.train.engine import GradientEngine  # noqa: E402
from onnxinit.train.graph import build_training_graph  # noqa: E402

SAMPLE = ROOT / "samples" / "resnet20_bn_train.onnx"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def agreement(a, b) -> str:
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return f"{np.linalg.norm(a - b) / np.linalg.norm(b):.1e}, cosine {cosine:.6f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--subbatches", type=int, default=3)
    parser.add_argument("--two-threads", action="store_true", help="also time torch on 2 threads")
    parser.add_argument("--central", action="store_true", help="also time ours with central differences")
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0: as the package sets them)")
    args = parser.parse_args()

    if args.ort_threads:
        package_options = engine_module.session_options

        def session_options(runtime):
            options = package_options(runtime)
            options.intra_op_num_threads = args.ort_threads
            return options
        engine_module.session_options = session_options   # GradientEngine._session reads this name

    model = onnx.load(str(SAMPLE))
    training = build_training_graph(model)
    engine = GradientEngine(training)
    problem = NioProblem(training, engine, "authors", "forward")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    rows = subbatch_weights(args.batch, args.subbatches, 0.2)
    feeds = {training.inputs[0]: x, training.labels: y}
    omega = dict.fromkeys(problem.coefficients, 1.0)

    def ours(which=problem):
        with single_threaded_blas():
            return which.coefficient_gradient(omega, feeds, rows, gamma=None)[2]

    def theirs():
        return torch_oracle.coefficient_gradient(model, training.weights, omega, x, y, rows, problem.tracked,
                                                 problem.coefficients, "authors", constrained=False)

    sides = {"ours": ours, "torch1": theirs}
    if args.central:
        central = NioProblem(training, engine, "authors", "central")   # same engine, its own stacked session
        sides["central"] = lambda: ours(central)
    if args.two_threads:
        def theirs_two():
            torch.set_num_threads(2)
            try:
                return theirs()
            finally:
                torch.set_num_threads(1)
        sides["torch2"] = theirs_two
    times = {name: [] for name in sides}
    results = {name: fn() for name, fn in sides.items()}   # warm-up
    for _ in range(args.repeat):
        for name, fn in sides.items():
            seconds, results[name] = timed(fn)
            times[name].append(seconds)
    median = {name: statistics.median(t) for name, t in times.items()}

    a = np.array([results["ours"][k] for k in problem.coefficients])
    b = np.array([results["torch1"][k] for k in problem.coefficients])
    params = sum(w.size for w in training.weights.values())
    print(f"ResNet-20 + BatchNorm (training mode): {params / 1e3:.0f}k weights, {len(problem.coefficients)} "
          f"coefficients, {len(problem.tracked)} tracked tensors")
    print(f"batch {args.batch}, D={args.subbatches} sub-batches (overlap 0.2), authors' variant; median of "
          f"{args.repeat} after a warm-up; {os.cpu_count()} CPUs seen")
    threads = f"{args.ort_threads} intra-op thread(s)" if args.ort_threads else "default intra-op threads"
    print(f"ours  (ONNX Runtime {engine.runtime.__version__}, {threads}, forward differences, 2 runs: "
          f"D + D gradients): {median['ours']:.3f} s   "
          f"[{', '.join(f'{t:.3f}' for t in times['ours'])}]")
    print(f"torch (double backward, 1 thread, torch {torch.__version__}):           {median['torch1']:.3f} s   "
          f"[{', '.join(f'{t:.3f}' for t in times['torch1'])}]")
    if "torch2" in median:
        print(f"torch (double backward, 2 threads):                                  {median['torch2']:.3f} s   "
              f"[{', '.join(f'{t:.3f}' for t in times['torch2'])}]")
    if "central" in median:
        print(f"ours, central differences (2 runs: D + 2D gradients):                "
              f"{median['central']:.3f} s   [{', '.join(f'{t:.3f}' for t in times['central'])}]")
    print(f"agreement with torch: relative difference {agreement(a, b)}")
    if "central" in median:
        c = np.array([results["central"][k] for k in problem.coefficients])
        print(f"agreement with torch, central differences: relative difference {agreement(c, b)}")
    print(f"ratio ours / torch (1 thread): {median['ours'] / median['torch1']:.2f}x   (target <= 1.0x)")
    if "torch2" in median:
        print(f"ratio ours / torch (2 threads): {median['ours'] / median['torch2']:.2f}x")
    if "central" in median:
        print(f"ratio ours with central differences / torch (1 thread): {median['central'] / median['torch1']:.2f}x")


if __name__ == "__main__":
    main()
