"""Predicted (and optionally measured) signal statistics per layer: what `inspect` and `check` show.

Rows are the outputs of weighted layers and of block joins (an Add, Sum or
Concat of two or more signals), plus the model outputs; ``all_tensors`` gives
every signal tensor. Each row may carry flags:

* ``low`` / ``high``: the variance (measured when there is a measurement,
  else predicted) is below ``min_var`` or above ``max_var``; ``nonfinite``: it is NaN or
  infinite (a weighted layer with any of the three fails ``check``);
* ``mispredicted``: measured and predicted variance differ by more than
  ``mismatch`` times (either way).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .api import _as_model, check_sizes
from .errors import OnnxInitError
from .functions import OpenedCalls
from .graph import Graph, taken_sizes
from .moments import Moments
from .propagate import propagate
from .report import Report
from .rules import RuleTable

JOIN_OPS = {"Add", "Sum", "Concat"}


@dataclass
class Row:
    tensor: str
    node: str
    op_type: str
    weighted: bool
    predicted: Moments
    measured: tuple | None = None      # (mean, var)
    flags: list = field(default_factory=list)

    @property
    def variance(self) -> float:
        return self.measured[1] if self.measured is not None else self.predicted.var

    def as_dict(self) -> dict:
        return {"tensor": self.tensor, "node": self.node, "op_type": self.op_type, "weighted": self.weighted,
                "predicted": self.predicted.as_dict(),
                "measured": None if self.measured is None else {"mean": self.measured[0], "var": self.measured[1]},
                "flags": self.flags}


@dataclass
class Inspection:
    report: Report
    rows: list
    min_var: float
    max_var: float

    @property
    def offending(self) -> list:
        return [r for r in self.rows if r.weighted and ({"low", "high", "nonfinite"} & set(r.flags))]

    @property
    def weighted_rows(self) -> list:
        return [r for r in self.rows if r.weighted]

    def summary_dict(self) -> dict:
        weighted = self.weighted_rows
        worst = max(weighted, key=lambda r: abs(np.log(max(r.variance, 1e-300))) if np.isfinite(r.variance)
                    else np.inf, default=None)
        outputs = [r for r in self.rows if r.tensor in self.report.output_moments]
        return {
            "weighted_layers": len(weighted),
            "in_band": len(weighted) - len(self.offending),
            "min_var": self.min_var, "max_var": self.max_var,
            "worst": None if worst is None else {"node": worst.node, "variance": worst.variance},
            "output_variance": {r.tensor: r.variance for r in outputs},
            "measured": any(r.measured is not None for r in self.rows),
        }


def _rows(graph: Graph, ctx, all_tensors: bool) -> list:
    weighted_outputs = set(ctx.layer_outputs)
    rows = []
    for node in graph.nodes:
        for out in node.output[:1]:
            if out not in ctx.moments:
                continue
            joins = node.op_type in JOIN_OPS and sum(1 for i in node.input if i in ctx.moments) >= 2
            if all_tensors or out in weighted_outputs or joins or out in graph.outputs:
                rows.append(Row(out, node.name or out, node.op_type, out in weighted_outputs, ctx.moments[out]))
    return rows


def _flag(rows, min_var: float, max_var: float, mismatch: float) -> None:
    for r in rows:
        v = r.variance
        if not np.isfinite(v) or v < min_var:
            r.flags.append("low" if np.isfinite(v) else "nonfinite")
        elif v > max_var:
            r.flags.append("high")
        if r.measured is not None:
            p, m = r.predicted.var, r.measured[1]
            if not (np.isfinite(p) and np.isfinite(m)) or (p > 0 and m > 0 and max(p / m, m / p) > mismatch) \
                    or (p > 0) != (m > 0):
                r.flags.append("mispredicted")


def inspect_model(model_or_path, measure_signal: bool = False, batch: int = 16, data=None, rules=(),
                  input_mean: float = 0.0, input_var: float = 1.0, all_tensors: bool = False,
                  min_var: float = 0.1, max_var: float = 10.0, mismatch: float = 1.5, command: str = "inspect",
                  device: str = "auto", sizes: dict | None = None) -> Inspection:
    """Propagate the model's current weights; with ``measure_signal``, also run it in ONNX Runtime.
    ``sizes``: {symbolic input dim name: size} for dynamic dims after the first (api.autoinit)."""
    start = time.perf_counter()
    if not (0 < min_var < max_var):
        raise OnnxInitError(f"need 0 < min-var < max-var (got {min_var}, {max_var})")
    model, source = _as_model(model_or_path)
    check_sizes(model, sizes)
    table = RuleTable(rules)
    calls = OpenedCalls(model, lambda node: table.lookup(node) is not None)   # inside them is measured too
    graph = Graph(model, sizes)
    ctx = propagate(graph, table, Moments(input_mean, input_var))
    rows = _rows(graph, ctx, all_tensors)
    if measure_signal and rows:
        from .measure import data_feeds, gaussian_feeds, measure
        feeds = data_feeds(model, data) if data is not None else \
            gaussian_feeds(model, batch, np.random.default_rng(0), input_mean, input_var, sizes)
        measured = measure(model, [r.tensor for r in rows], feeds, model_path=source, device=device)
        for r in rows:
            r.measured = measured[r.tensor]
    _flag(rows, min_var, max_var, mismatch)
    report = Report(
        command=command, model=source, output=None, seed=None,
        options={"measure": measure_signal, "batch": batch, "data": str(data) if data else None,
                 "input_mean": input_mean, "input_var": input_var, "min_var": min_var, "max_var": max_var,
                 "all": all_tensors, "dims": taken_sizes(model, sizes)},
        layers=ctx.layers, kinds_used=ctx.kinds_used, fallbacks=ctx.fallbacks, warnings=ctx.warnings,
        output_moments={o: ctx.moments[o] for o in graph.outputs if o in ctx.moments},
        seconds=time.perf_counter() - start)
    inspection = Inspection(report, rows, min_var, max_var)
    report.extra = {"rows": [r.as_dict() for r in rows], "summary": inspection.summary_dict()}
    if calls.notes:
        report.extra["opened"] = calls.notes
    return inspection


def table(inspection: Inspection, limit: int | None = 60) -> str:
    """The per-layer table, then the summary; long tables keep their head, tail and flagged rows."""
    rows = inspection.rows
    measured = any(r.measured is not None for r in rows)
    header = f"{'node':<44} {'op':<18} {'pred mean':>10} {'pred var':>10}"
    if measured:
        header += f" {'meas mean':>10} {'meas var':>10}"
    lines = [header + "  flags"]
    shown = list(range(len(rows)))
    if limit is not None and len(rows) > limit:
        keep = set(range(limit // 2)) | set(range(len(rows) - limit // 2, len(rows)))
        keep |= {i for i, r in enumerate(rows) if r.flags}
        shown = sorted(keep)
    previous = -1
    for i in shown:
        if i != previous + 1:
            lines.append(f"  ... {i - previous - 1} rows without flags (--rows 0 shows every row)")
        previous = i
        r = rows[i]
        name = (("* " if r.weighted else "  ") + r.node)[:44]
        line = f"{name:<44} {r.op_type[:18]:<18} {r.predicted.mean:>10.4g} {r.predicted.var:>10.4g}"
        if measured:
            line += f" {r.measured[0]:>10.4g} {r.measured[1]:>10.4g}" if r.measured else f" {'':>10} {'':>10}"
        lines.append(line + ("  " + ",".join(r.flags) if r.flags else ""))
    s = inspection.summary_dict()
    lines.append("")
    lines.append("* = weighted layer")
    lines.append(f"weighted layers in [{s['min_var']:g}, {s['max_var']:g}]: {s['in_band']}/{s['weighted_layers']}"
                 + (" (measured)" if s["measured"] else " (predicted)"))
    if s["worst"]:
        lines.append(f"worst layer: {s['worst']['node']} (variance {s['worst']['variance']:.4g})")
    for name, v in s["output_variance"].items():
        lines.append(f"model output {name}: variance {v:.4g}")
    dims = inspection.report.options.get("dims")
    if dims:
        lines.append(f"dynamic input dims taken as {', '.join(f'{k}={v}' for k, v in dims.items())} "
                     "(--dim NAME=SIZE sets them)")
    for w in inspection.report.warnings[:5]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
