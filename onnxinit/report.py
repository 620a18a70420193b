"""What a run did: per-layer records, rule kinds, fallbacks, warnings; as text or JSON."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from . import __version__

SCHEMA_VERSION = 1


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass
class Report:
    command: str
    model: str
    output: str | None
    seed: int | None
    options: dict
    layers: list
    kinds_used: dict
    fallbacks: dict
    warnings: list
    output_moments: dict
    seconds: float = 0.0
    structural_changes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)     # command-specific sections (inspect: rows, summary)

    def as_dict(self) -> dict:
        return {
            "schema": "onnxinit-report", "schema_version": SCHEMA_VERSION, "tool_version": __version__,
            "command": self.command, "model": self.model, "output": self.output, "seed": self.seed,
            "options": self.options, "seconds": round(self.seconds, 3),
            "layers": [{"node": r.node, "op_type": r.op_type, "weight": r.weight, "fan_in": r.fan_in,
                        "tap_fraction": r.tap_fraction, "weight_std": r.std,
                        "input": r.input.as_dict(), "output": r.output.as_dict()} for r in self.layers],
            "kinds_used": self.kinds_used, "fallbacks": self.fallbacks, "warnings": self.warnings,
            "structural_changes": self.structural_changes,
            "output_moments": {k: m.as_dict() for k, m in self.output_moments.items()},
            **self.extra,
        }

    def to_json(self) -> str:
        """JSON text (docs/report-schema.json); non-finite numbers are written as null."""
        return json.dumps(_finite(self.as_dict()), indent=2, allow_nan=False)

    def summary(self) -> str:
        lines = [f"onnxinit {self.command}: {self.model}" + (f" -> {self.output}" if self.output else "")]
        lines.append(f"  weighted layers initialized: {len(self.layers)}")
        if self.extra.get("embeddings"):
            lines.append(f"  embedding tables initialized: {len(self.extra['embeddings'])}")
        if self.extra.get("recurrent"):
            lines.append(f"  recurrent layers initialized (gate pre-activations variance 1): "
                         f"{len(self.extra['recurrent'])}")
        if self.layers and self.command == "autoinit":
            worst = max(self.layers, key=lambda r: abs(r.output.var - 1.0))
            lines.append(f"  predicted output of every weighted layer: mean 0, variance 1 "
                         f"(the one furthest from 1: variance {worst.output.var:.4g} at {worst.node})")
        elif self.layers:
            low = min(self.layers, key=lambda r: r.output.var)
            high = max(self.layers, key=lambda r: r.output.var)
            lines.append(f"  predicted output variance of the weighted layers: from {low.output.var:.4g} "
                         f"({low.node}) to {high.output.var:.4g} ({high.node}); last {self.layers[-1].output.var:.4g}")
        if self.extra.get("lsuv"):
            records = self.extra["lsuv"]
            tol = self.options.get("tol")
            met = sum(r["variance_after"] is not None and abs(r["variance_after"] - 1) < tol for r in records)
            lines.append(f"  measured on the data batch: {met} of {len(records)} layers reached variance 1 +- {tol:g} "
                         f"(most tries {max(r['tries'] for r in records)})")
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds_used.items()))
        lines.append(f"  ops by rule kind: {kinds or 'none'}")
        if self.fallbacks:
            lines.append("  ops without a rule (Monte Carlo estimate, or passed through; see warnings): " +
                         ", ".join(f"{k} x{v}" for k, v in sorted(self.fallbacks.items())))
        if self.extra.get("opened"):
            counts = {}
            for what in self.extra["opened"]:
                counts[what] = counts.get(what, 0) + 1
            lines.append("  analysed through their bodies: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
        for name, m in self.output_moments.items():
            lines.append(f"  model output {name}: predicted mean {m.mean:.4g}, variance {m.var:.4g}")
        if self.options.get("dims"):
            taken = ", ".join(f"{k}={v}" for k, v in self.options["dims"].items())
            lines.append(f"  dynamic input dims taken as {taken} (--dim NAME=SIZE sets them)")
        for change in self.structural_changes:
            lines.append(f"  changed: {change}")
        shown = self.warnings[:10]
        for w in shown:
            lines.append(f"  warning: {w}")
        if len(self.warnings) > len(shown):
            lines.append(f"  ... {len(self.warnings) - len(shown)} more warnings (see --json)")
        lines.append(f"  time: {self.seconds:.2f} s")
        return "\n".join(lines)
