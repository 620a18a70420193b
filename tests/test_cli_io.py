"""CLI exit codes, atomic output, external-data checks."""
import subprocess
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

from conftest import SAMPLES


def run(*args):
    return subprocess.run([sys.executable, "-m", "onnxinit.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_writes_model(tmp_path):
    out = tmp_path / "out.onnx"
    r = run("autoinit", SAMPLES[0], "-o", out)
    assert r.returncode == 0, r.stderr
    assert "weighted layers initialized" in r.stdout
    onnx.checker.check_model(onnx.load(out))
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_version_and_residual_option(tmp_path):
    r = run("--version")
    assert r.returncode == 0 and "onnxinit" in r.stdout
    out = tmp_path / "out.onnx"
    r = run("autoinit", next(p for p in SAMPLES if p.stem == "resnet20_nobn"), "-o", out, "--residual", "weighted")
    assert r.returncode == 0, r.stderr
    assert "changed:" in r.stdout
    onnx.checker.check_model(onnx.load(out))


def test_bad_inputs_exit_2_and_leave_nothing(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a model" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad in (tmp_path / "missing.onnx", tmp_path, empty, junk):
        out = tmp_path / "o.onnx"
        r = run("autoinit", bad, "-o", out)
        assert r.returncode == 2, (bad, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("error:")
        assert not out.exists()


def _model_with_external(tmp_path, location):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(helper.make_model(g).SerializeToString())
    return path


def test_external_data_escaping_folder_refused(tmp_path):
    for i, kind in enumerate(("dotdot", "absolute", "missing")):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
        location = {"dotdot": "../../secret.bin", "absolute": str(tmp_path / "secret.bin"),
                    "missing": "missing.bin"}[kind]
        path = _model_with_external(d, location)
        r = run("autoinit", path, "-o", d / "out.onnx")
        assert r.returncode == 2, (kind, r.stderr)
        assert not (d / "out.onnx").exists()


def test_external_data_output_roundtrip(tmp_path):
    out = tmp_path / "big.onnx"
    r = run("autoinit", SAMPLES[0], "-o", out, "--external-data")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "big.onnx.data").exists()
    import onnxruntime as ort
    ort.InferenceSession(str(out))


def test_outputs_get_the_umask_permissions(tmp_path):
    """Atomic writes go through mkstemp (0600); the renamed output must be readable as any new file."""
    import os
    mask = os.umask(0o022)
    try:
        r = run("autoinit", SAMPLES[0], "-o", tmp_path / "out.onnx", "--external-data", "--json", tmp_path / "r.json")
        assert r.returncode == 0, r.stderr
    finally:
        os.umask(mask)
    for name in ("out.onnx", "out.onnx.data", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_unwritable_report_path_is_refused_before_any_output(tmp_path):
    """--json (or --plot) into a missing folder, or onto the input, stops before the model is written."""
    sample = next(p for p in SAMPLES if p.stem == "mlp_relu_deep")
    out = tmp_path / "out.onnx"
    missing = tmp_path / "no" / "such" / "r.json"
    for command in (["autoinit"], ["init", "--scheme", "he-normal"], ["wninit"]):
        for report in (missing, sample):
            r = run(*command, sample, "-o", out, "--json", report)
            assert r.returncode == 2, (command, report, r.stderr)
            assert "Traceback" not in r.stderr
            assert [p.name for p in tmp_path.iterdir()] == [], (command, list(tmp_path.iterdir()))
    for command in (["inspect", "--plot", missing], ["check", "--json", missing]):
        r = run(*command[:1], sample, *command[1:])
        assert r.returncode == 2, (command, r.stderr)
        assert not missing.parent.exists()


def test_export_weights_never_overwrites_its_input(tmp_path):
    model = tmp_path / "m.npz"   # an ONNX file under a weights name: -o equal to it must be refused
    model.write_bytes(SAMPLES[0].read_bytes())
    r = run("export-weights", model, "-o", model)
    assert r.returncode == 2 and "input" in r.stderr, r.stderr
    assert model.read_bytes() == SAMPLES[0].read_bytes()


def _read_fifo(path, sink: list):
    import threading

    def read():
        with open(path, "rb") as f:
            sink.append(f.read())
    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_outputs_that_are_not_files_are_written_in_place(tmp_path):
    """A named pipe, /dev/stdout or "-" as output: written into, never replaced by a file."""
    import json
    import os
    import stat
    pipe = tmp_path / "model.pipe"
    os.mkfifo(pipe)
    received = []
    reader = _read_fifo(pipe, received)
    r = run("autoinit", SAMPLES[0], "-o", pipe, "-q")
    reader.join(timeout=60)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    onnx.checker.check_model(onnx.load_model_from_string(received[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pipe"]   # no spill or temp file left
    r = run("check", SAMPLES[0], "--json", "-")
    assert json.loads(r.stdout)["command"] == "check"
    report_pipe = tmp_path / "report.pipe"
    os.mkfifo(report_pipe)
    received = []
    reader = _read_fifo(report_pipe, received)
    r = run("inspect", SAMPLES[0], "--json", report_pipe)
    reader.join(timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(received[0])["command"] == "inspect"
    assert stat.S_ISFIFO(os.stat(report_pipe).st_mode)


def test_a_full_device_fails_with_one_line(tmp_path):
    import os
    import stat
    if not os.path.exists("/dev/full"):
        import pytest
        pytest.skip("no /dev/full here")
    r = run("autoinit", SAMPLES[0], "-o", "/dev/full", "-q")
    assert r.returncode == 2
    assert "No space left" in r.stderr and "Traceback" not in r.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_model_read_from_standard_input(tmp_path):
    """MODEL "-" reads standard input: the same output as from the file; empty input is exit 2."""
    from_file, from_stdin = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run("autoinit", SAMPLES[0], "-o", from_file, "-q").returncode == 0
    r = subprocess.run([sys.executable, "-m", "onnxinit.cli", "autoinit", "-", "-o", str(from_stdin), "-q"],
                       input=SAMPLES[0].read_bytes(), capture_output=True)
    assert r.returncode == 0, r.stderr
    assert from_file.read_bytes() == from_stdin.read_bytes()
    r = subprocess.run([sys.executable, "-m", "onnxinit.cli", "check", "-"], input=b"", capture_output=True)
    assert r.returncode == 2 and b"no bytes to read" in r.stderr
