"""Seeded mutations of the samples, and a driver that runs every subcommand on them.

    python tests/fuzz_cases.py --seed 0 --cases 500

Each case (byte flips, truncation, dropped nodes, renamed inputs, random
attribute values, random or absurd input dims, other opsets, wrong dtypes,
initializer dims that do not match the payload, payloads moved to external
data that is missing or outside the folder) is written to a fresh folder and
run through one subcommand in-process. A case is bad when it raises anything
but a clean exit, exits other than 0/1/2, takes longer than the per-case
limit, leaves a file behind on failure, or writes a model (exit 0) that the
ONNX checker refuses.
Prints the counts; exits 1 when any case is bad.
"""
from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def _mutate_proto(model: onnx.ModelProto, rng: random.Random) -> bytes:
    kind = rng.choice(["drop_node", "rename_input", "attribute", "input_shape", "absurd_dim", "opset", "dtype",
                       "initializer_dims", "external"])
    graph = model.graph
    if kind == "drop_node" and graph.node:
        del graph.node[rng.randrange(len(graph.node))]
    elif kind == "rename_input" and graph.node:
        node = graph.node[rng.randrange(len(graph.node))]
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(["", "nowhere", graph.node[0].output[0]])
    elif kind == "attribute":
        nodes = [n for n in graph.node if n.attribute]
        if nodes:
            attr = rng.choice(rng.choice(nodes).attribute)
            if attr.type == onnx.AttributeProto.INT:
                attr.i = rng.choice([-5, 0, 1, 3, 10**9])
            elif attr.type == onnx.AttributeProto.FLOAT:
                attr.f = rng.choice([-1.0, 0.0, 1e30, float("nan")])
            elif attr.type == onnx.AttributeProto.INTS and attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = rng.choice([-3, 0, 7, 10**6])
    elif kind in ("input_shape", "absurd_dim"):
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            d.Clear()
            d.dim_value = rng.choice([1, 3, 5]) if kind == "input_shape" else rng.choice([10**9, 2**40])
    elif kind == "opset":
        model.opset_import[0].version = rng.choice([1, 7, 99])
    elif kind == "initializer_dims" and graph.initializer:
        t = rng.choice(graph.initializer)
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 10**6, 10**12])
    elif kind == "external" and graph.initializer:   # payload moved to a file that is not there or not allowed
        t = rng.choice(graph.initializer)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value=rng.choice(["../outside.bin", "/etc/hostname", "missing.bin"]))
    elif kind == "dtype":
        tensors = [t for t in graph.initializer]
        if tensors:
            t = rng.choice(tensors)
            t.data_type = rng.choice([onnx.TensorProto.INT8, onnx.TensorProto.FLOAT16, onnx.TensorProto.STRING])
    return model.SerializeToString()


def make_case(sample_bytes: bytes, rng: random.Random) -> bytes:
    how = rng.choice(["flip", "truncate", "proto", "proto", "proto"])
    data = bytearray(sample_bytes)
    if how == "flip":
        for _ in range(rng.randint(1, 20)):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256)
        return bytes(data)
    if how == "truncate":
        return bytes(data[:rng.randrange(len(data))])
    model = onnx.ModelProto.FromString(sample_bytes)
    return _mutate_proto(model, rng)


SAMPLES = ["mlp_relu_deep", "cnn_plain", "resnet20_nobn", "cnn_swish", "bert_tiny", "mlp_selu_dropout"]


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def main(argv=None) -> int:
    from click.testing import CliRunner

    from onnxinit.cli import cli
    from onnxinit.measure import gaussian_feeds
    from onnxinit.schemes.classic import SCHEMES

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--limit", type=int, default=30, help="seconds per case")
    parser.add_argument("--training", action="store_true",
                        help="the commands that need ONNX Runtime's training build (nio, compare) instead")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent / "samples"
    sources = {name: (root / f"{name}.onnx").read_bytes() for name in SAMPLES}
    feeds = {name: gaussian_feeds(onnx.load_from_string(b), 4, np.random.default_rng(0)) for name, b in sources.items()}
    rng = random.Random(args.seed)
    runner = CliRunner()
    signal.signal(signal.SIGALRM, _alarm)
    counts = {0: 0, 1: 0, 2: 0}
    bad = []
    start = time.time()
    for i in range(args.cases):
        name = rng.choice(SAMPLES)
        data = make_case(sources[name], rng)
        with tempfile.TemporaryDirectory() as tmp:
            case, out = Path(tmp) / "case.onnx", Path(tmp) / "out.onnx"
            case.write_bytes(data)
            inputs = Path(tmp) / "data.npz"
            labels = np.arange(len(next(iter(feeds[name].values())))) % 10
            np.savez(inputs, **feeds[name], y=labels)
            weights = Path(tmp) / "weights.npz"
            command = rng.choice([
                ["nio", str(case), "-o", str(out), "-q", "--data", str(inputs), "--iters", "1", "--batch", "4",
                 "--subbatches", "2", "--gamma", "auto"],
                ["compare", str(case), "--data", str(inputs), "--steps", "2", "--batch", "2", "--seeds", "1",
                 "--test-fraction", "0.5"]]) if args.training else rng.choice([
                ["autoinit", str(case), "-o", str(out), "--quiet"], ["check", str(case)], ["inspect", str(case)],
                ["inspect", str(case), "--measure", "--batch", "2"],
                ["init", str(case), "-o", str(out), "-q", "--scheme", rng.choice(SCHEMES)],
                ["lsuv", str(case), "-o", str(out), "-q", "--data", str(inputs), "--batch", "4"],
                ["export-weights", str(case), "-o", str(weights), "-q"],
                ["wninit", str(case), "-o", str(out), "-q"]])
            out = weights if command[0] == "export-weights" else out
            signal.alarm(args.limit)
            try:
                result = runner.invoke(cli, command, catch_exceptions=True)
                problem = None
                if result.exception is not None and not isinstance(result.exception, SystemExit):
                    problem = f"raised {result.exception!r}"
                elif result.exit_code not in (0, 1, 2):
                    problem = f"exit {result.exit_code}"
                elif "Traceback" in result.output:
                    problem = "traceback in the output"
            except CaseTimeout:
                problem, result = f"took over {args.limit} s", None
            finally:
                signal.alarm(0)
            if problem is None and result is not None and result.exit_code == 0 and out.suffix == ".onnx" \
                    and out.exists():
                try:
                    onnx.checker.check_model(str(out))
                except onnx.checker.ValidationError as exc:
                    problem = f"wrote a model the ONNX checker refuses ({str(exc).splitlines()[0][:80]})"
            left = sorted(p.name for p in Path(tmp).iterdir()
                          if p.name not in ("case.onnx", "data.npz") and not (p == out and result is not None and result.exit_code == 0))
            if left:
                problem = f"left {left}"
            if problem:
                bad.append(f"case {i} ({name}, {command[0]}): {problem}")
            elif result is not None:
                counts[result.exit_code] += 1
    print(f"fuzz{' (training commands)' if args.training else ''}: {args.cases} cases in {time.time() - start:.0f} s; exit 0: {counts[0]}, exit 1: {counts[1]}, "
          f"exit 2: {counts[2]}; tracebacks, hangs, partial files or invalid outputs: {len(bad)}")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
