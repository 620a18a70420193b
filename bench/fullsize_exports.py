"""NIO and wninit on full-size training-mode exports (issues 5 and 6).

(a) ``onnxinit nio`` for a few iterations on random data of the right shapes on training-mode
ONNX exports of torchvision ResNet-50/18, MobileNetV3-Small/Large, EfficientNet-B0,
DenseNet-121, ViT-B/16, timm ConvNeXt-tiny and Swin-tiny and transformers BERT-base
(BertForSequenceClassification, default BertConfig), then a check that the output differs from
its input only by one scale per weight tensor (every float initializer: new / old one constant,
equal to the JSON report's coefficient, or the tensor unchanged).
(b) ``onnxinit wninit`` on torchvision ResNet-18/50/152 exports: the residual stages it finds
(expected 2,2,2,2 / 3,4,6,3 / 3,8,36,3 blocks).

(c) ``autoinit`` (then ``inspect --measure`` on 8 rows) on any of them; a wider set for it alone:
torchvision GoogLeNet, Inception-v3 (96x96), ShuffleNetV2 and MaxViT-T (224x224), a 4-layer
transformers LLaMA (hidden 128) and wav2vec2-base (half a second of 16 kHz audio), e.g.
``--models googlenet_eval,inception_v3_eval,shufflenet_v2_x1_0_eval,maxvit_t_eval,llama_eval,wav2vec2_eval``;
torchvision MobileNetV2, MnasNet, RegNetY-400MF, SqueezeNet-1.1, EfficientNetV2-S, ResNeXt-50 and
a recurrent model (Linear, 2-layer LSTM 256, bidirectional GRU 128, head on the last step; 32
steps of 40 features), e.g. with torch's default exporter (``--exporter dynamo``, opset 18,
inference exports only) into their own ``--out``:
``export --exporter dynamo --image-size 128 --models mobilenet_v2_eval,mnasnet1_0_eval,regnet_y_400mf_eval,
squeezenet1_1_eval,efficientnet_v2_s_eval,resnext50_32x4d_eval,lstm_gru_eval``.

All models are randomly initialized (weights=None / pretrained=False / BertConfig): nothing is
downloaded but packages. Export needs torch + torchvision + timm + transformers, which the
training environment (.venv-train, onnxruntime-training) cannot hold, so exports run in their
own environment, outside the repository:

    python3 -m venv /tmp/fullsize/venv
    /tmp/fullsize/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm transformers onnx

Then, from the repository root (this script only needs numpy + onnx in the python that runs it;
it calls the export python and the training onnxinit by subprocess):

    .venv-train/bin/python bench/fullsize_exports.py all --export-python /tmp/fullsize/venv/bin/python \
        --onnxinit .venv-train/bin/onnxinit --out /tmp/fullsize [--models resnet50,bert] [--timeout 900]

or step by step: ``export`` (writes OUT/NAME.onnx and OUT/NAME.npz), ``nio`` (OUT/NAME.nio.onnx,
.json, .log + the one-scale check), ``wninit`` (ResNet-18/50/152 stage counts). Every step appends
to OUT/results.json (one record per model and step) and prints a line per model; a failure keeps
the exact last lines of the tool's error.

NIO settings (kept low for a 2-core CPU): --iters 2 --batch 8 --subbatches 2 --gamma auto
--start keep (the model's own weights, so NIO is isolated from AutoInit). Input sizes are small
where the architecture allows (CNNs 64x64, ViT-B/16 at image_size=112, Swin-tiny at 224, BERT
sequence length 16); the weight tensors are the full-size ones (ViT's position embedding aside),
num_classes=10.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

# name: (library, constructor, input spec)
#   input spec: list of (input name, shape without batch, dtype, high for integer inputs)
IMG64 = [("x", (3, 64, 64), "float32", None)]
MODELS = {
    "resnet18": IMG64, "resnet50": IMG64, "resnet152": IMG64,
    "mobilenet_v3_small": IMG64, "mobilenet_v3_large": IMG64,
    "efficientnet_b0": IMG64, "densenet121": IMG64,
    "vit_b_16": [("x", (3, 112, 112), "float32", None)],
    "convnext_tiny": IMG64,
    "swin_tiny": [("x", (3, 224, 224), "float32", None)],
    "bert": [("input_ids", (16,), "int64", 30522), ("attention_mask", (16,), "int64", None)],
    "vgg16": [("x", (3, 224, 224), "float32", None)],   # its adaptive pool to 7x7 needs >= 7x7 maps
    "coatnet_0": [("x", (3, 224, 224), "float32", None)],
    "gpt2": [("input_ids", (16,), "int64", 50257), ("attention_mask", (16,), "int64", None)],
    # a wider set for autoinit only (inference exports, NAME_eval)
    "googlenet": IMG64, "inception_v3": [("x", (3, 96, 96), "float32", None)], "shufflenet_v2_x1_0": IMG64,
    "maxvit_t": [("x", (3, 224, 224), "float32", None)],
    "llama": [("input_ids", (16,), "int64", 1000), ("attention_mask", (16,), "int64", None)],
    "wav2vec2": [("x", (8000,), "float32", None)],
    "mobilenet_v2": IMG64, "mnasnet1_0": IMG64, "regnet_y_400mf": IMG64, "squeezenet1_1": IMG64,
    "efficientnet_v2_s": IMG64, "resnext50_32x4d": IMG64,
    "lstm_gru": [("x", (32, 40), "float32", None)],   # 32 steps of 40 features (a speech front end)
}
EXTERNAL_DATA = {"gpt2"}   # written with its weights in an external data file
EVAL = "_eval"             # NAME_eval: the same model exported in inference mode (BN folded, no dropout)


IMAGE_SIZE = None   # --image-size: every image model's input made S x S (the 64x64 defaults)
EXPORTER = "torchscript"   # --exporter dynamo: torch.export-based (torch's default), inference exports
OPSET = None        # --opset: 17 (torchscript) / 18 (dynamo) unless given


def spec_of(name: str) -> list:
    spec = MODELS[name.removesuffix(EVAL)]
    if IMAGE_SIZE and spec == IMG64:
        return [("x", (3, IMAGE_SIZE, IMAGE_SIZE), "float32", None)]
    return spec

NIO_MODELS = ["resnet50", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
              "densenet121", "vit_b_16", "convnext_tiny", "swin_tiny", "bert"]
WNINIT_MODELS = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3], "resnet152": [3, 8, 36, 3]}
NUM_CLASSES = 10
ROWS = 16


def _TokenModel(model, pick, **options):
    """A transformers model called with (input_ids, attention_mask), one tensor out (``pick``)."""
    import torch

    class TokenModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return pick(self.model(input_ids=input_ids, attention_mask=attention_mask, **options))
    return TokenModel()


def build(name: str):
    """The randomly initialized torch module for ``name`` (runs in the export environment)."""
    import torch
    torch.manual_seed(0)
    if name == "swin_tiny":
        import timm
        return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=NUM_CLASSES)
    if name == "convnext_tiny":
        import timm
        return timm.create_model("convnext_tiny", pretrained=False, num_classes=NUM_CLASSES)
    if name == "coatnet_0":
        import timm
        return timm.create_model("coatnet_0_rw_224", pretrained=False, num_classes=NUM_CLASSES)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config()
        config._attn_implementation = "eager"
        return _TokenModel(GPT2LMHeadModel(config), lambda out: out.logits, use_cache=False)
    if name == "bert":
        from transformers import BertConfig, BertForSequenceClassification
        config = BertConfig(num_labels=NUM_CLASSES, return_dict=False)
        config._attn_implementation = "eager"
        return _TokenModel(BertForSequenceClassification(config), lambda out: out[0])
    if name == "llama":   # transformers 5: the causal mask is built from the batch size (Range(batch))
        from transformers import LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return _TokenModel(LlamaForCausalLM(config), lambda out: out.logits, use_cache=False)
    if name == "wav2vec2":   # raw audio: conv feature extractor with GroupNorm, positional conv (kernel 128)
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        class Wav2Vec2(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = Wav2Vec2Model(Wav2Vec2Config())

            def forward(self, x):
                return self.encoder(x).last_hidden_state
        return Wav2Vec2()
    if name == "lstm_gru":   # Linear, 2-layer LSTM, bidirectional GRU, Linear head on the last step

        class Recurrent(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Linear(40, 128)
                self.lstm = torch.nn.LSTM(128, 256, num_layers=2, batch_first=True)
                self.gru = torch.nn.GRU(256, 128, batch_first=True, bidirectional=True)
                self.head = torch.nn.Linear(256, NUM_CLASSES)

            def forward(self, x):
                y, _ = self.lstm(torch.relu(self.embed(x)))
                y, _ = self.gru(y)
                return self.head(y[:, -1])
        return Recurrent()
    import torchvision
    if name in ("googlenet", "inception_v3"):
        return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES, aux_logits=False,
                                                 init_weights=True)
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(weights=None, num_classes=NUM_CLASSES, image_size=112)
    return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)


def export_one(name: str, out: Path) -> dict:
    """Export ``name`` to OUT/NAME.onnx (in the export environment): in training mode
    (BatchNormalization training_mode=1, Dropout kept, no constant folding), or for NAME_eval in
    inference mode (BN folded into the convs, Dropout removed, constants folded)."""
    import torch
    spec = spec_of(name)
    inference = name.endswith(EVAL)
    model = build(name.removesuffix(EVAL))
    model = model.eval() if inference else model.train()
    args = tuple(torch.ones((2, *shape), dtype=getattr(torch, dtype)) if high is None
                 else torch.randint(0, high, (2, *shape)) for _, shape, dtype, high in spec)
    names = [n for n, *_ in spec]
    dynamic = {n: {0: "batch"} for n in names} | {"logits": {0: "batch"}}
    path = out / f"{name}.onnx"
    started = time.perf_counter()
    mode = torch.onnx.TrainingMode.EVAL if inference else torch.onnx.TrainingMode.TRAINING
    if EXPORTER == "dynamo":   # torch's default exporter (torch.export), inference mode only
        if not inference:
            raise SystemExit("--exporter dynamo exports NAME_eval (inference mode) only")
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=OPSET or 18, input_names=names,
                          output_names=["logits"], dynamic_shapes=tuple({0: batch} for _ in names),
                          external_data=False)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=OPSET or 17, training=mode,
                          do_constant_folding=inference, input_names=names, output_names=["logits"],
                          dynamic_axes=dynamic)
    if name.removesuffix(EVAL) in EXTERNAL_DATA:
        import onnx
        exported = onnx.load(str(path))
        onnx.save(exported, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{name}.onnx.data", size_threshold=1024)
    return {"params": sum(p.numel() for p in model.parameters()), "export_s": time.perf_counter() - started}


def write_data(name: str, out: Path) -> Path:
    import numpy as np
    rng = np.random.default_rng(0)
    arrays = {}
    for key, shape, dtype, high in spec_of(name):
        if dtype == "float32":
            arrays[key] = rng.standard_normal((ROWS, *shape)).astype(np.float32)
        elif high is None:
            arrays[key] = np.ones((ROWS, *shape), dtype=dtype)
        else:
            arrays[key] = rng.integers(0, high, (ROWS, *shape)).astype(dtype)
    arrays["y"] = rng.integers(0, NUM_CLASSES, ROWS).astype(np.int64)
    path = out / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def record(out: Path, entry: dict):
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    results.append(entry | {"when": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(entry, default=str), flush=True)


def tail(text: str, lines: int = 6) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-lines:])


def run_logged(cmd: list, log: Path, timeout: float) -> tuple[int | None, str, float]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        text = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")) \
            + ((exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")) \
            + f"\nTIMEOUT after {timeout:.0f} s"
    log.write_text(" ".join(map(str, cmd)) + "\n" + text)
    return code, text, time.perf_counter() - started


def cmd_export(args):
    for name in args.models:
        size = ["--image-size", str(args.image_size)] if args.image_size else []
        size += ["--exporter", args.exporter] + (["--opset", str(args.opset)] if args.opset else [])
        code, text, seconds = run_logged([args.export_python, __file__, "export-one", name, "--out", str(args.out)] + size,
                                         args.out / f"{name}.export.log", args.timeout)
        entry = {"step": "export", "model": name, "ok": code == 0, "seconds": round(seconds, 1)}
        if code == 0:
            entry |= json.loads([line for line in text.splitlines() if line.startswith('{"params"')][-1])
            entry["onnx_mb"] = round((args.out / f"{name}.onnx").stat().st_size / 2**20, 1)
            write_data(name, args.out)
        else:
            entry["error"] = tail(text)
        record(args.out, entry)


def one_scale_check(old_path: Path, new_path: Path, coefficients: dict) -> dict:
    """Every float initializer of NEW is its OLD payload times one constant (the report's coefficient)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    old = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(old_path)).graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(new_path)).graph.initializer}
    result = {"float_initializers": 0, "unchanged": 0, "scaled": 0, "violations": [], "max_rel_dev": 0.0,
              "coef_mismatch": [], "missing": sorted(set(old) ^ set(new))[:5]}
    for name, a in old.items():
        if name not in new or a.dtype.kind != "f":
            continue
        b = new[name]
        result["float_initializers"] += 1
        if a.shape != b.shape:
            result["violations"].append(f"{name}: shape {a.shape} -> {b.shape}")
            continue
        if np.array_equal(a, b):
            result["unchanged"] += 1
            continue
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        nz = a64 != 0
        if not nz.any() or np.any(b64[~nz] != 0):
            result["violations"].append(f"{name}: zero entries changed")
            continue
        ratio = b64[nz] / a64[nz]
        scale = float(np.median(ratio))
        dev = float(np.max(np.abs(ratio - scale)) / max(abs(scale), 1e-30))
        result["max_rel_dev"] = max(result["max_rel_dev"], dev)
        if dev > 1e-5:
            result["violations"].append(f"{name}: ratio spread {dev:.3g}")
            continue
        result["scaled"] += 1
        coef = coefficients.get(name)
        if coef is None or abs(scale - float(coef)) > 1e-5 * max(1.0, abs(float(coef))):
            result["coef_mismatch"].append(f"{name}: ratio {scale:.6g}, report {coef}")
    scales = [float(v) for v in coefficients.values()]
    result["coefficients"] = len(scales)
    result["coef_range"] = [min(scales), max(scales)] if scales else None
    result["ok"] = not result["violations"] and not result["coef_mismatch"]
    result["violations"] = result["violations"][:10]
    result["coef_mismatch"] = result["coef_mismatch"][:10]
    return result


def cmd_nio(args):
    for name in args.models:
        model, data = args.out / f"{name}.onnx", args.out / f"{name}.npz"
        output, report = args.out / f"{name}.nio.onnx", args.out / f"{name}.nio.json"
        entry = {"step": "nio", "model": name}
        if not model.exists() or not data.exists():
            record(args.out, entry | {"ok": False, "error": "no export (see the export step)"})
            continue
        report.unlink(missing_ok=True)
        cmd = [args.onnxinit, "nio", str(model), "--data", str(data), "--labels", "y", "-o", str(output),
               "--iters", str(args.iters), "--batch", "8", "--subbatches", "2", "--gamma", "auto",
               "--start", "keep", "--device", "cpu", "--in-place", "--json", str(report), "--debug"]
        code, text, seconds = run_logged(cmd, args.out / f"{name}.nio.log", args.timeout)
        entry |= {"ok": code == 0, "seconds": round(seconds, 1), "exit": code}
        if code == 0 and report.exists():
            doc = json.loads(report.read_text())
            b, a = doc["before"], doc["after"]
            entry |= {"nio_s": round(doc["seconds"], 1), "gc": [b["gc"], a["gc"]], "gn": [b["gn"], a["gn"]],
                      "gamma": doc["gamma"], "repair_steps": doc["repair_steps"], "stopped": doc["stopped"],
                      "check": one_scale_check(model, output, doc["coefficients"])}
        else:
            entry["error"] = tail(text, 12)
        record(args.out, entry)


def cmd_wninit(args):
    import re
    for name in [m for m in args.models if m in WNINIT_MODELS]:
        model = args.out / f"{name}.onnx"
        if not model.exists():
            record(args.out, {"step": "wninit", "model": name, "ok": False, "error": "no export"})
            continue
        report = args.out / f"{name}.wninit.json"
        cmd = [args.onnxinit, "wninit", str(model), "-o", str(args.out / f"{name}.wninit.onnx"), "--in-place",
               "--json", str(report)]
        code, text, seconds = run_logged(cmd, args.out / f"{name}.wninit.log", args.timeout)
        entry = {"step": "wninit", "model": name, "ok": code == 0, "seconds": round(seconds, 1),
                 "expected": WNINIT_MODELS[name], "summary": tail(text, 40)}
        if code == 0:
            blocks = [int(n) for n in re.findall(r"stage \d+: (\d+) blocks?", text)]
            entry["blocks_printed"] = blocks
            entry["matches"] = blocks == WNINIT_MODELS[name]
        record(args.out, entry)


def cmd_autoinit(args):
    """autoinit, then inspect --measure on 8 rows of the model's data file (masks all ones):
    the share of weighted layers in [0.5, 2], the output variance, the worst prediction error."""
    import numpy as np
    for name in args.models:
        model, data = args.out / f"{name}.onnx", args.out / f"{name}.npz"
        if not model.exists() or not data.exists():
            record(args.out, {"step": "autoinit", "model": name, "ok": False, "error": "no export"})
            continue
        output, report, batch = args.out / f"{name}.autoinit.onnx", args.out / f"{name}.inspect.json", \
            args.out / f"{name}.batch8.npz"
        with np.load(data) as arrays:
            np.savez(batch, **{k: arrays[k][:8] for k in arrays.files if k != "y"})
        cmd = [args.onnxinit, "autoinit", str(model), "-o", str(output), "--quiet"]
        code, text, seconds = run_logged(cmd, args.out / f"{name}.autoinit.log", args.timeout)
        entry = {"step": "autoinit", "model": name, "ok": code == 0, "seconds": round(seconds, 1)}
        if code == 0:
            code, text, _ = run_logged([args.onnxinit, "inspect", str(output), "--measure", "--data", str(batch),
                                        "--json", str(report)], args.out / f"{name}.inspect.log",
                                       args.timeout)
        if code == 0 and report.exists():
            doc = json.loads(report.read_text())
            rows = doc["rows"]
            layers = [r for r in rows if r["weighted"] and r["measured"]]
            measured = [r["measured"]["var"] for r in layers]
            errors = [abs(r["predicted"]["var"] - r["measured"]["var"]) / r["measured"]["var"] for r in layers]
            outputs = list(doc["summary"]["output_variance"].values())
            entry |= {"layers": len(layers), "in_band": sum(0.5 <= v <= 2 for v in measured),
                      "worst_var": [min(measured), max(measured)], "worst_error": round(max(errors), 3),
                      "output_var": outputs}
        else:
            entry |= {"ok": False, "error": tail(text, 12)}
        record(args.out, entry)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("export-one", help="(internal; export environment) export one model")
    one.add_argument("name", choices=sorted(MODELS) + sorted(m + EVAL for m in MODELS))
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--image-size", type=int, default=None)
    one.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    one.add_argument("--opset", type=int, default=None)
    for command in ("all", "export", "nio", "wninit", "autoinit"):
        p = sub.add_parser(command)
        p.add_argument("--out", type=Path, default=Path("/tmp/fullsize"))
        p.add_argument("--export-python", default="/tmp/fullsize/venv/bin/python")
        p.add_argument("--onnxinit", default=".venv-train/bin/onnxinit")
        p.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS) +
                       f" (NAME{EVAL}: the inference-mode export of NAME)")
        p.add_argument("--iters", type=int, default=2)
        p.add_argument("--timeout", type=float, default=900, help="seconds per model and step")
        p.add_argument("--image-size", type=int, default=None,
                       help="input size S x S for the CNNs that default to 64x64 (export step; use its own --out)")
        p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                       help="dynamo: torch's default exporter, for NAME_eval models (use its own --out)")
        p.add_argument("--opset", type=int, default=None, help="export opset (17 torchscript, 18 dynamo)")
    args = parser.parse_args()
    global IMAGE_SIZE, EXPORTER, OPSET
    IMAGE_SIZE, EXPORTER, OPSET = args.image_size, args.exporter, args.opset
    if args.command == "export-one":
        os.environ.setdefault("OMP_NUM_THREADS", "2")
        print(json.dumps(export_one(args.name, args.out)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    default = {"export": list(MODELS), "nio": NIO_MODELS, "wninit": list(WNINIT_MODELS), "autoinit": list(MODELS)}
    chosen = args.models.split(",") if args.models else None
    steps = ["export", "autoinit", "wninit", "nio"] if args.command == "all" else [args.command]
    for step in steps:
        args.models = [m for m in default[step] if chosen is None or m in chosen] + \
            [m for m in chosen or [] if m.endswith(EVAL) and m.removesuffix(EVAL) in default[step]]
        {"export": cmd_export, "nio": cmd_nio, "wninit": cmd_wninit, "autoinit": cmd_autoinit}[step](args)


if __name__ == "__main__":
    main()
