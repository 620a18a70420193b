"""Python API mirroring the CLI."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxInitError
from .functions import OpenedCalls
from .graph import FLOAT_TYPES, Graph, symbolic_dim_names, taken_sizes
from .model_io import load_model, save_model
from .moments import Moments
from .propagate import propagate
from .report import Report
from .rules import RuleTable
from .kinds.common import attributes
from .kinds.weighted import weight_layout
from .schemes.autoinit import AutoInit, sample_shape
from .untie import untie_uniform_weights

__all__ = ["autoinit", "load_model", "save_model"]


def record_provenance(model: onnx.ModelProto, entries: dict) -> None:
    """metadata_props onnxinit.version and onnxinit.<key> (others untouched), so a pipeline can
    tell how a model was initialized."""
    from . import __version__
    entries = {"version": __version__, **entries}
    existing = {p.key: p for p in model.metadata_props}
    for key, value in entries.items():
        full = f"onnxinit.{key}"
        if full in existing:
            existing[full].value = str(value)
        else:
            model.metadata_props.add(key=full, value=str(value))


def single_threaded_blas():
    """BLAS on one thread while weights are computed: sums then come out bit for bit the same
    whatever OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say, so the output file does too."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


def planned_weights(graph: Graph, table: RuleTable) -> list:
    """(weight name, sample shape (groups, units per group, fan-in)) of the weighted layers, in
    the order propagation visits them."""
    planned = []
    for node in graph.nodes:
        rule = table.lookup(node)
        if rule is None or rule.kind != "weighted":
            continue
        spec = rule.get("weight", 1)
        candidates = range(len(node.input)) if spec == "any" else [int(spec)]
        for i in candidates:
            name = node.input[i] if i < len(node.input) else ""
            if name in graph.initializers and graph.is_weight(name):
                dims = tuple(graph.initializers[name].dims)
                try:
                    shape = sample_shape(weight_layout(node, rule, dims, i, attributes(node)))
                except (IndexError, ValueError, ZeroDivisionError):
                    break   # the weighted kind will say why it does not fit
                if int(np.prod(shape, dtype=np.int64)) == int(np.prod(dims, dtype=np.int64)):
                    planned.append((name, shape))
                break
    return planned


def _as_model(model_or_path, lazy: bool = False) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return copy, "<model>"
    if isinstance(model_or_path, (str, Path)):
        return load_model(model_or_path, lazy=lazy), str(model_or_path)
    raise TypeError("expected an onnx.ModelProto or a path")


TIED_PASSES = 3   # propagation passes at most when an embedding table is tied to a later layer


def check_sizes(model, sizes) -> None:
    """Every float graph input has a rank, and every name in ``sizes`` is a symbolic dim (after
    the first axis) of a graph input, sized >= 1."""
    initializers = {t.name for t in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    for vi in model.graph.input:
        tensor = vi.type.tensor_type
        if vi.name in used and vi.name not in initializers and vi.type.HasField("tensor_type") \
                and tensor.elem_type in FLOAT_TYPES and not tensor.HasField("shape"):
            raise OnnxInitError(f"graph input {vi.name!r} has no shape, not even a rank: the layers it feeds "
                                "cannot be analysed; export the model with input shapes (symbolic dims are fine)")
    names = symbolic_dim_names(model)
    for name, size in (sizes or {}).items():
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise OnnxInitError(f"--dim {name}: no graph input has a symbolic dim of that name after its "
                                f"first axis (symbolic dims: {known})")
        if int(size) < 1:
            raise OnnxInitError(f"--dim {name}={size}: sizes must be at least 1")


def autoinit(model_or_path, seed: int = 0, distribution: str = "truncated", rules=(),
             input_mean: float = 0.0, input_var: float = 1.0, residual: str = "sum", progress=None,
             mode: str = "analytic", batch: int = 64, data=None, device: str = "auto",
             return_report: bool = False, spill=None, sizes: dict | None = None):
    """AutoInit a model: every weighted layer's output gets mean 0 and variance 1.

    ``residual="weighted"`` also rescales every residual sum to variance 1
    (folded into weights, or a Mul inserted); ``progress(done, total)`` is
    called after each node. ``mode="empirical"`` then rescales each weighted
    layer so ONNX Runtime measures E[y^2] = 1 on ``batch`` Gaussian samples
    (or the inputs in the ``data`` .npz), layer by layer (empirical.py).

    Returns the new ``onnx.ModelProto`` (the input is never modified), or
    ``(model, Report)`` with ``return_report=True``.

    ``sizes`` ({symbolic input dim name: size}) sets the sizes the analysis takes for dynamic
    input dims after the first (default graph.SYMBOLIC_DIM), and the empirical mode feeds.

    ``spill`` (a ``model_io.Spill``, analytic mode, a path as input): external data stays on
    disk and new weights of 1 MB or more are written to the spill file, so a large model is
    never held in memory; save the result with ``save_model`` before the spill is closed.
    """
    start = time.perf_counter()
    if input_var < 0 or not np.isfinite(input_var) or not np.isfinite(input_mean):
        raise OnnxInitError("input moments must be finite, with a non-negative variance")
    if mode not in ("analytic", "empirical"):
        raise OnnxInitError(f"mode must be analytic or empirical, not {mode!r}")
    spill = spill if mode == "analytic" else None
    table = RuleTable(rules)
    tied_scales = {}
    for _ in range(TIED_PASSES):
        model, source = _as_model(model_or_path, lazy=spill is not None)
        check_sizes(model, sizes)
        untied = untie_uniform_weights(model, table)
        calls = OpenedCalls(model, lambda node: table.lookup(node) is not None)
        graph = Graph(model, sizes)
        graph.spill = spill
        if not any(graph.is_weight(t.name) for t in model.graph.initializer) and not graph.constant_nodes:
            raise OnnxInitError(f"{source}: the model has no float weights to initialize")
        scheme = AutoInit(graph, seed=seed, distribution=distribution, planned=planned_weights(graph, table),
                          tied_scales=tied_scales)
        try:
            with single_threaded_blas():
                result = propagate(graph, table, Moments(input_mean, input_var), scheme, progress, residual)
        finally:
            scheme.close()
        if not scheme.tied_factors:
            break
        # an embedding table reused by a later weighted layer: propagate again with the table
        # drawn at the scale that layer needs (everything downstream of the lookup depends on it)
        tied_scales = {name: tied_scales.get(name, 1.0) * f for name, f in scheme.tied_factors.items()} | \
            {name: s for name, s in tied_scales.items() if name not in scheme.tied_factors}
    if not result.layers and not result.embeddings and not result.recurrent:
        raise OnnxInitError(f"{source}: found no weighted layer with a float weight to initialize "
                            "(integer and quantized weights are left to their quantizer)")
    calibration = []
    if mode == "empirical":
        from .empirical import calibrate
        calibration = calibrate(model, result.layers, batch=batch, data=data, input_mean=input_mean,
                                input_var=input_var, device=device, seed=seed, sizes=sizes)
    kept_open = calls.active and bool(result.structural_changes)
    if kept_open:   # nodes were inserted among the opened ones: the model is written opened
        result.structural_changes.append("function calls replaced by their bodies (they hold the inserted nodes): "
                                         + ", ".join(sorted(set(calls.notes))))
    else:
        calls.restore()
    record_provenance(model, {"command": "autoinit", "seed": str(seed), "distribution": distribution,
                              "residual": residual, "mode": mode})
    report = Report(
        command="autoinit", model=source, output=None, seed=seed,
        options={"distribution": distribution, "input_mean": input_mean, "input_var": input_var,
                 "residual": residual, "mode": mode, "dims": taken_sizes(model, sizes),
                 "rules": [str(r) for r in rules]},
        layers=result.layers, kinds_used=result.kinds_used, fallbacks=result.fallbacks,
        warnings=result.warnings, structural_changes=untied + result.structural_changes,
        output_moments={o: result.moments[o] for o in graph.outputs if o in result.moments},
        seconds=time.perf_counter() - start)
    if result.embeddings:
        report.extra["embeddings"] = [{"node": n, "table": t, "output": m.as_dict()} for n, t, m in result.embeddings]
    if result.recurrent:
        report.extra["recurrent"] = [{"node": n, "op_type": op, "weight_std_per_gate": std, "output": m.as_dict()}
                                     for n, op, std, m in result.recurrent]
    if calls.notes:
        report.extra["opened"] = calls.notes
    if calibration:
        report.extra["empirical"] = [{"node": n, "measured_second_moment": m, "factor": f} for n, m, f in calibration]
    return (model, report) if return_report else model
