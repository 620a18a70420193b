"""Command line: one subcommand per job; exit 0 ok, 2 bad input."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import OnnxInitError


@click.group()
@click.version_option(__version__, prog_name="onnxinit")
def cli():
    """Re-initialize the weights of ONNX models so that they train well."""


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the new model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--distribution", type=click.Choice(["truncated", "normal", "uniform", "orthogonal"]),
              default="truncated", show_default=True)
@click.option("--rules", "rules", type=click.Path(path_type=Path), multiple=True, help="Extra rule table (TOML).")
@click.option("--input-mean", type=float, default=0.0, show_default=True)
@click.option("--input-var", type=float, default=1.0, show_default=True)
@click.option("--residual", type=click.Choice(["sum", "weighted"]), default="sum", show_default=True,
              help="weighted: rescale every residual Add to variance 1 (folded into weights or a Mul inserted).")
@click.option("--external-data", is_flag=True, help="Write tensor payloads to OUTPUT.data beside the model.")
@click.option("--in-place", is_flag=True, help="Allow OUTPUT to be the input file.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON.")
@click.option("--quiet", is_flag=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def autoinit(model, output, seed, distribution, rules, input_mean, input_var, residual, external_data, in_place,
             json_path, quiet, debug):
    """AutoInit MODEL: every weighted layer outputs mean 0, variance 1."""
    from .api import autoinit as run, save_model
    try:
        if output.resolve() == model.resolve() and not in_place:
            raise OnnxInitError(f"{output}: output is the input file; pass --in-place to overwrite it")
        with ProgressBar(enabled=not quiet) as progress:
            new, report = run(model, seed=seed, distribution=distribution, rules=rules, input_mean=input_mean,
                              input_var=input_var, residual=residual, progress=progress, return_report=True)
        save_model(new, output, external_data=True if external_data else None)
        report.output = str(output)
        if json_path:
            save_text(json_path, report.to_json())
        if not quiet:
            click.echo(report.summary())
    except OnnxInitError as exc:
        _fail(exc, debug)
    except Exception as exc:  # noqa: BLE001 - unexpected errors still get one line and exit 2
        _fail(exc, debug)


class ProgressBar:
    """A bar on stderr for graphs of at least MIN_NODES nodes; a no-op otherwise."""

    MIN_NODES = 300

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.MIN_NODES:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="propagating", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def save_text(path: Path, text: str) -> None:
    import os
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=".onnxinit-", dir=path.parent if str(path.parent) else ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fail(exc, debug):
    if debug:
        traceback.print_exc()
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def main():
    cli()


if __name__ == "__main__":
    main()
