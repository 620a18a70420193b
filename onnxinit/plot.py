"""Variance per layer on a log axis, weighted layers marked; several models overlaid."""
from __future__ import annotations

from pathlib import Path

from .errors import OnnxInitError
from .model_io import atomic_output, is_stream


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OnnxInitError("--plot needs matplotlib: pip install 'onnxinit[plot]'") from exc
    return plt


def _save(fig, path) -> None:
    """The figure as a PNG at ``path``, written atomically (temp file in the same folder)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not is_stream(path) and not folder.is_dir():
        raise OnnxInitError(f"{path}: folder {folder} does not exist")
    with atomic_output(path, ".png") as f:
        fig.savefig(f, dpi=110, format="png")


def plot_variance(inspections, labels, path, title: str | None = None) -> None:
    """Write a PNG: one line per model (measured variance where measured, else predicted)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for inspection, label in zip(inspections, labels):
        rows = inspection.rows
        measured = any(r.measured is not None for r in rows)
        xs = list(range(len(rows)))
        ys = [max(r.variance, 1e-30) for r in rows]
        line, = ax.plot(xs, ys, "-", lw=1.2, label=f"{label} ({'measured' if measured else 'predicted'})")
        wx = [x for x, r in zip(xs, rows) if r.weighted]
        wy = [y for y, r in zip(ys, rows) if r.weighted]
        ax.plot(wx, wy, "o", ms=4, color=line.get_color())
    first = inspections[0]
    ax.axhspan(first.min_var, first.max_var, color="green", alpha=0.08, label="target band")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax.plot([], [], "o", color="black", ms=4, label="weighted layer")
    ax.set_yscale("log")
    ax.set_xlabel("layer output, in graph order (weighted layers and block outputs)")
    ax.set_ylabel("signal variance (log scale)")
    ax.set_title(title or "Signal variance per layer")
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
