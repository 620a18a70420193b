"""Invalid models and unsafe outputs (issue 8): every subcommand answers one line and exit 2,
and writes nothing; a valid model whose nodes are merely out of order is still accepted."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

COMMANDS = [["autoinit", "-o", "{out}"], ["init", "--scheme", "he-normal", "-o", "{out}"], ["wninit", "-o", "{out}"],
            ["export-weights", "-o", "{out}.npz"], ["inspect"], ["check"], ["inspect", "--measure"]]


def run(*args):
    return subprocess.run([sys.executable, "-m", "onnxinit.cli", *map(str, args)], capture_output=True, text=True)


def mlp(opset=17, ir=8, domain_opsets=()):
    """x (N, 8) -> MatMul w1 -> Relu -> MatMul w2 -> y (N, 8)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}") for i in (1, 2)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domain_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir)


def broken(kind):
    model = mlp()
    graph = model.graph
    if kind == "dangling":
        graph.node[1].input[0] = "nowhere"
    elif kind == "cycle":
        graph.node[0].input[0] = "a"
    elif kind == "opset":
        model.opset_import[0].version = 99
    elif kind == "ml_opset":
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 99))
    elif kind == "ir":
        model.ir_version = 99
    elif kind == "ssa":
        graph.node[2].output[0] = "h"
    elif kind == "unknown_op":
        graph.node[1].op_type = "NoSuchOp"
    elif kind == "attribute":
        graph.node[0].attribute.append(helper.make_attribute("bogus", 1))
    elif kind == "absurd_dims":
        del graph.initializer[0].dims[:]
        graph.initializer[0].dims.extend([8, 10**12])
    elif kind == "quantized":
        for t in graph.initializer:
            t.CopyFrom(numpy_helper.from_array(np.ones((8, 8), np.int8), t.name))
        for node in (graph.node[0], graph.node[2]):
            node.op_type = "MatMulInteger"
        graph.input[0].type.tensor_type.elem_type = TensorProto.INT8
        graph.node.insert(1, helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT))
        graph.node[2].input[0] = "hf"
        graph.node.append(helper.make_node("Cast", ["a"], ["a8"], to=TensorProto.INT8))
        graph.node[3].input[0] = "a8"
        graph.output[0].type.tensor_type.elem_type = TensorProto.INT32
    return model


@pytest.mark.parametrize("kind", ["dangling", "cycle", "opset", "ml_opset", "ir", "ssa", "unknown_op", "attribute",
                                  "absurd_dims", "quantized"])
def test_invalid_model_exit_2_on_every_subcommand(tmp_path, kind):
    path = tmp_path / "bad.onnx"
    path.write_bytes(broken(kind).SerializeToString())
    commands = COMMANDS if kind != "quantized" else COMMANDS[:3]   # a quantized model can be inspected
    for command in commands:
        out = tmp_path / "out.onnx"
        args = [a.format(out=out) for a in command]
        r = run(args[0], path, *args[1:])
        assert r.returncode == 2, (kind, command, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, (kind, r.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"], (kind, command)


def test_unsorted_valid_graph_is_accepted_and_keeps_its_order(tmp_path):
    model = mlp()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    path.write_bytes(model.SerializeToString())
    r = run("autoinit", path, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert [n.name for n in onnx.load(out).graph.node] == ["fc2", "relu", "fc1"]


def _external(tmp_path, length=None, payload_bytes=256, folder="m"):
    """mlp with w1 in w.bin (optionally a wrong 'length' or a short file)."""
    model = mlp()
    w1 = model.graph.initializer[0]
    raw = w1.raw_data
    w1.ClearField("raw_data")
    w1.data_location = TensorProto.EXTERNAL
    entries = {"location": "w.bin", "offset": "0", **({"length": str(length)} if length is not None else {})}
    for key, value in entries.items():
        w1.external_data.add(key=key, value=value)
    root = tmp_path / folder
    root.mkdir()
    (root / "w.bin").write_bytes(raw[:payload_bytes])
    (root / "m.onnx").write_bytes(model.SerializeToString())
    return root / "m.onnx"


@pytest.mark.parametrize("case", ["short_without_length", "length_not_dims", "symlinked_file", "symlinked_folder"])
def test_bad_external_data_refused(tmp_path, case):
    if case == "short_without_length":
        path = _external(tmp_path, payload_bytes=100)
    elif case == "length_not_dims":
        path = _external(tmp_path, length=128)
    else:   # a location inside the folder that is a link to a file outside it
        outside = tmp_path / "secret"
        outside.mkdir()
        (outside / "w.bin").write_bytes(b"\0" * 256)
        path = _external(tmp_path)
        if case == "symlinked_file":
            (path.parent / "w.bin").unlink()
            os.symlink(outside / "w.bin", path.parent / "w.bin")
        else:
            (path.parent / "w.bin").unlink()
            os.symlink(outside, path.parent / "sub")
            model = onnx.load(path, load_external_data=False)
            next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = "sub/w.bin"
            path.write_bytes(model.SerializeToString())
    for command in COMMANDS:
        out = tmp_path / "out.onnx"
        args = [a.format(out=out) for a in command]
        r = run(args[0], path, *args[1:])
        assert r.returncode == 2, (case, command, r.stderr)
        assert "w.bin" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists() and not (tmp_path / "out.onnx.npz").exists()


def test_output_onto_the_inputs_external_data_is_refused(tmp_path):
    path = _external(tmp_path)
    data = path.parent / "w.bin"
    before = data.read_bytes()
    r = run("autoinit", path, "-o", data)                     # the output model onto it
    assert r.returncode == 2 and "external data" in r.stderr, r.stderr
    r = run("autoinit", path, "-o", path.parent / "w", "--external-data")   # OUTPUT.data is not w.bin: fine
    assert r.returncode == 0, r.stderr
    (path.parent / "w").unlink()
    (path.parent / "w.data").unlink()
    model = onnx.load(path, load_external_data=False)    # now the input's data file is named as ours would be
    next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = "o.onnx.data"
    data.rename(path.parent / "o.onnx.data")
    path.write_bytes(model.SerializeToString())
    r = run("autoinit", path, "-o", path.parent / "o.onnx", "--external-data")
    assert r.returncode == 2 and "external data" in r.stderr, r.stderr
    assert (path.parent / "o.onnx.data").read_bytes() == before
    assert not (path.parent / "o.onnx").exists()


def test_nan_data_refused_by_inspect_and_check(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp().SerializeToString())
    data = tmp_path / "d.npz"
    np.savez(data, x=np.full((4, 8), np.inf, np.float32))
    for command in ("inspect", "check"):
        r = run(command, path, "--measure", "--data", data)
        assert r.returncode == 2 and "NaN or infinite" in r.stderr, r.stderr


def test_data_of_the_wrong_shape_is_named_with_the_shape_the_input_takes(tmp_path):
    """An --data array whose rank or fixed sizes do not fit the input: one line naming both
    shapes, exit 2, for every command that reads data (the empirical mode printed ONNX
    Runtime's raw message before)."""
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp().SerializeToString())
    data = tmp_path / "d.npz"
    for shape in [(4, 7), (4, 8, 1)]:
        np.savez(data, x=np.zeros(shape, np.float32))
        for command in (["inspect", path, "--measure"], ["autoinit", path, "-o", tmp_path / "o.onnx", "--mode",
                                                          "empirical"]):
            r = run(*command, "--data", data)
            assert r.returncode == 2 and f"has shape {shape}; input 'x' takes (?, 8)" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]


def test_input_without_a_rank_is_refused_and_a_scalar_input_is_measured(tmp_path):
    """No shape at all on the input: exit 2 naming it (before, every layer but the last was left
    undrawn and autoinit exited 0). A scalar float input (a temperature) is fed as a 0-d array."""
    model = mlp()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    path = tmp_path / "no_rank.onnx"
    onnx.save(model, path)
    for command in (["autoinit", path, "-o", tmp_path / "out.onnx"], ["check", path]):
        r = run(*command)
        assert r.returncode == 2 and "'x' has no shape" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_rank.onnx"]
    scaled = mlp()
    scaled.graph.node[-1].output[0] = "z"
    scaled.graph.node.append(helper.make_node("Mul", ["z", "t"], ["y"], name="temperature"))
    scaled.graph.input.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, []))
    path = tmp_path / "scalar_input.onnx"
    onnx.save(scaled, path)
    r = run("autoinit", path, "-o", tmp_path / "out.onnx", "-q")
    assert r.returncode == 0, r.stderr
    r = run("check", tmp_path / "out.onnx", "--measure", "--verbose")
    assert r.returncode == 0, r.stderr


def test_nan_weight_fails_check_and_channel_mismatch_is_refused(tmp_path):
    """A weighted layer whose variance is NaN fails check (it passed: only low and high counted),
    and a Conv whose weight expects other input channels than it gets is exit 2 everywhere."""
    model = mlp()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    for extra in ([], ["--measure"]):
        r = run("check", path, *extra)
        assert r.returncode == 1 and "fc1" in r.stdout and "nan" in r.stdout, r.stdout + r.stderr
    weight = numpy_helper.from_array(np.ones((4, 5, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "mismatch.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    for command in (["autoinit", path, "-o", tmp_path / "out.onnx"], ["inspect", path], ["check", path]):
        r = run(*command)
        assert r.returncode == 2 and "3 channels" in r.stderr and "expects 5" in r.stderr, r.stderr
    assert not (tmp_path / "out.onnx").exists()
