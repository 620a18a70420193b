"""Command line: one subcommand per job; exit 0 ok, 2 bad input."""
from __future__ import annotations

import os
import signal
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


def _parse_dims(ctx, param, values) -> dict:
    """--dim NAME=SIZE (repeatable) -> {name: size}."""
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if not name or not size.strip().isdigit() or int(size) < 1:
            raise click.BadParameter(f"{value!r}: expected NAME=SIZE with a positive integer size")
        sizes[name.strip()] = int(size)
    return sizes


_DIM_OPTION = click.option(
    "--dim", "sizes", multiple=True, callback=_parse_dims, metavar="NAME=SIZE",
    help="Size of a symbolic input dim after the first (a sequence length, a dynamic image size): "
         "what the analysis takes and measuring feeds (default 16). Repeatable.")

_OUTPUT_OPTIONS = [
    click.option("--external-data", is_flag=True, help="Write tensor payloads to OUTPUT.data beside the model."),
    click.option("--in-place", is_flag=True, help="Allow OUTPUT to be the input file."),
    click.option("--json", "json_path", type=click.Path(path_type=Path),
                 help="Write the report as JSON (docs/report-schema.json); - for standard output."),
    click.option("-q", "--quiet", is_flag=True, help="No summary."),
    click.option("--debug", is_flag=True, help="Show tracebacks."),
]


def _output_options(f):
    for option in reversed(_OUTPUT_OPTIONS):
        f = option(f)
    return f


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
@click.option("--mode", type=click.Choice(["analytic", "empirical"]), default="analytic", show_default=True,
              help="empirical: then rescale each weighted layer to E[y^2] = 1 as ONNX Runtime measures it.")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Samples for --mode empirical.")
@click.option("--data", type=click.Path(path_type=Path), help=".npz of inputs for --mode empirical.")
@_DIM_OPTION
@_output_options
def autoinit(model, output, seed, distribution, rules, input_mean, input_var, residual, mode, batch, data, sizes,
             external_data, in_place, json_path, quiet, debug):
    """AutoInit MODEL: every weighted layer outputs mean 0, variance 1."""
    from .api import autoinit as run
    from .model_io import spill_for
    try:
        _check_outputs([model, data], output, in_place, [json_path])
        with ProgressBar(enabled=not quiet) as progress, spill_for(output) as spill:
            new, report = run(model, seed=seed, distribution=distribution, rules=rules, input_mean=input_mean,
                              input_var=input_var, residual=residual, progress=progress, mode=mode, batch=batch,
                              data=data, return_report=True, spill=spill, sizes=sizes)
            _write_results(new, report, output, external_data, json_path, quiet)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


def _refuse_overwrite(model: Path, output: Path, in_place: bool) -> None:
    if output.resolve() == model.resolve() and not in_place:
        raise OnnxInitError(f"{output}: output is the input file; pass --in-place to overwrite it")


def _check_output_folder(output: Path) -> None:
    from .model_io import is_stream
    if str(output) == "-" or is_stream(output):
        if str(output) != "-" and not os.access(output, os.W_OK):
            raise OnnxInitError(f"{output}: not writable")
        return
    folder = output.parent
    if not folder.is_dir():
        raise OnnxInitError(f"{output}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxInitError(f"{output}: output folder {folder} is not writable")


def _refuse_external_data_overwrite(model: Path, output: Path) -> None:
    """The output model and its data file (OUTPUT.data) must not be the input's external data."""
    from .model_io import data_file_name, external_data_files
    targets = {p.resolve() for p in (output, output.parent / data_file_name(output)) if p.is_file()}
    if not targets or not model.is_file():
        return
    clash = targets & external_data_files(model)
    if clash:
        raise OnnxInitError(f"{output}: writing it would overwrite {sorted(clash)[0]}, the external data of {model}")


def _check_outputs(inputs, output=None, in_place: bool = False, reports=()) -> None:
    """Before any work: the output model and every report file (--json, --plot) can be written
    and overwrite no input (the model only with --in-place) nor each other, so a run never
    stops after writing some of its files."""
    inputs = [Path(p) for p in inputs if p is not None]
    written = []
    if output is not None:
        _refuse_overwrite(inputs[0], output, in_place)
        if any(output.resolve() == other.resolve() for other in inputs[1:]):
            raise OnnxInitError(f"{output}: output would overwrite an input file")
        _check_output_folder(output)
        _refuse_external_data_overwrite(inputs[0], output)
        written.append(output)
    for path in (Path(p) for p in reports if p is not None):
        if any(path.resolve() == other.resolve() for other in inputs + written):
            raise OnnxInitError(f"{path}: a report would overwrite an input or another output")
        _check_output_folder(path)
        written.append(path)


def _write_results(new, report, output: Path, external_data: bool, json_path, quiet: bool) -> None:
    """The model (atomically, external data when asked or over 2 GB), then the JSON report and summary."""
    from .model_io import save_model
    save_model(new, output, external_data=True if external_data else None)
    report.output = str(output)
    if json_path:
        save_text(json_path, report.to_json())
    if not quiet:
        click.echo(report.summary(), err=_json_on_stdout(json_path))




@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the new model.")
@click.option("--scheme", type=click.Choice(["he-normal", "he-uniform", "glorot-normal", "glorot-uniform",
                                             "lecun-normal", "lecun-uniform", "orthogonal", "torch-default"]),
              default="he-normal", show_default=True,
              help="torch-default: what PyTorch's layers do at construction (kaiming_uniform a=sqrt 5, bias bound "
                   "1/sqrt fan_in).")
@click.option("--gain", type=click.Choice(["scheme", "auto"]), default="scheme", show_default=True,
              help="scheme: the scheme's own gain (he sqrt 2, others 1); auto: per layer from the nonlinearity "
                   "that follows (torch.nn.init.calculate_gain).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rules", "rules", type=click.Path(path_type=Path), multiple=True, help="Extra rule table (TOML).")
@click.option("--input-mean", type=float, default=0.0, show_default=True, help="For the predicted signal.")
@click.option("--input-var", type=float, default=1.0, show_default=True, help="For the predicted signal.")
@_output_options
def init(model, output, scheme, gain, seed, rules, input_mean, input_var, external_data, in_place, json_path,
         quiet, debug):
    """Re-initialize MODEL with a classic scheme (fans as torch.nn.init computes them)."""
    from .classic import init as run
    try:
        _check_outputs([model], output, in_place, [json_path])
        with ProgressBar(enabled=not quiet) as progress:
            new, report = run(model, scheme=scheme, seed=seed, gain=gain, rules=rules, input_mean=input_mean,
                              input_var=input_var, progress=progress, return_report=True)
        _write_results(new, report, output, external_data, json_path, quiet)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


def _input_map(pairs) -> dict:
    """--input NAME=KEY pairs as {model input: .npz key}."""
    mapping = {}
    for pair in pairs:
        name, sep, key = pair.partition("=")
        if not sep or not name or not key:
            raise OnnxInitError(f"--input expects NAME=KEY, not {pair!r}")
        mapping[name] = key
    return mapping


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the new model.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help=".npz of model inputs.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=KEY", help="Feed model input NAME from array KEY.")
@click.option("--batch", type=click.IntRange(1), default=256, show_default=True, help="Rows of the data used.")
@click.option("--tol", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="Accept a layer when |Var - 1| < tol (Mishkin & Matas).")
@click.option("--max-iters", type=click.IntRange(1), default=10, show_default=True, help="Tries per layer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the orthogonal start.")
@click.option("--rules", "rules", type=click.Path(path_type=Path), multiple=True, help="Extra rule table (TOML).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_output_options
def lsuv(model, output, data, inputs, batch, tol, max_iters, seed, rules, device, external_data, in_place,
         json_path, quiet, debug):
    """LSUV (data-dependent): orthogonal start, then each layer scaled to unit output variance on DATA."""
    from .lsuv import lsuv as run
    try:
        _check_outputs([model, data], output, in_place, [json_path])
        new, report = run(model, data, seed=seed, tol=tol, max_iters=max_iters, batch=batch,
                          input_map=_input_map(inputs), rules=rules, device=device, return_report=True)
        _write_results(new, report, output, external_data, json_path, quiet)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help=".npz with inputs and labels (held-out split: <key>_test arrays, else --test-fraction).")
@click.option("--labels", default="y", show_default=True, help="Key of the class labels in the data.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=KEY", help="Feed model input NAME from array KEY.")
@click.option("--output-name", help="The logits output (default: the first graph output).")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.01, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True,
              help="Runs per model; seed k fixes the batch order, the same for every model.")
@click.option("--loss", type=click.Choice(["ce", "mse"]), default="ce", show_default=True)
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Loss curves as a PNG.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Every run's losses and accuracy; - for standard output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compare(models, data, labels, inputs, output_name, steps, batch, lr, optimizer, seeds, loss, test_fraction,
            device, plot_path, json_path, debug):
    """Train MODELS from their own weights the same way (ONNX Runtime training) and compare them."""
    import json

    from .compare import checkpoints, compare as run, plot, table
    try:
        _check_outputs([*models, data], reports=[plot_path, json_path])
        input_map = {key: name for name, key in _input_map(inputs).items()}
        with click.progressbar(length=len(models) * seeds * steps, label="training", file=sys.stderr) as bar:
            results = run(models, data, steps=steps, batch=batch, lr=lr, optimizer=optimizer, seeds=seeds,
                          labels=labels, input_map=input_map or None, output_name=output_name, loss=loss,
                          test_fraction=test_fraction, device=device,
                          progress=lambda *args: bar.update(1))
        click.echo(table(results, steps), err=_json_on_stdout(json_path))
        if plot_path:
            plot(results, plot_path)
            click.echo(f"plot written to {plot_path}", err=_json_on_stdout(json_path))
        if json_path:
            report = {"schema": "onnxinit-compare", "schema_version": 1,
                      "options": {"steps": steps, "batch": batch, "lr": lr, "optimizer": optimizer, "seeds": seeds,
                                  "loss": loss, "data": str(data)},
                      "models": [r.as_dict(checkpoints(steps)) for r in results]}
            save_text(json_path, json.dumps(report, indent=2, allow_nan=True))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the new model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--direction", type=click.Choice(["forward", "backward"]), default="forward", show_default=True,
              help="forward: g = sqrt(gamma fan_in/fan_out) (signal forward); backward: g = sqrt(gamma).")
@click.option("--explain", is_flag=True, help="One line per layer: its role, gamma and gain.")
@click.option("--rules", "rules", type=click.Path(path_type=Path), multiple=True, help="Extra rule table (TOML).")
@_output_options
def wninit(model, output, seed, direction, explain, rules, external_data, in_place, json_path, quiet, debug):
    """Arpit et al.'s WN/ResNet init: orthogonal weights, gains by role in the residual blocks found."""
    from .model_io import save_model
    from .wn_api import describe, wninit as run
    try:
        _check_outputs([model], output, in_place, [json_path])
        new, result = run(model, seed=seed, direction=direction, rules=rules, return_report=True)
        save_model(new, output, external_data=True if external_data else None)
        result.output = str(output)
        if json_path:
            save_text(json_path, result.to_json())
        if not quiet:
            click.echo(describe(result, explain=explain), err=_json_on_stdout(json_path))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


def _gamma(value: str):
    if value == "auto":
        return value
    try:
        gamma = float(value)
    except ValueError:
        raise click.BadParameter("a positive number or 'auto'") from None
    if not gamma > 0:
        raise click.BadParameter("a positive number or 'auto'")
    return gamma


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the new model.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help=".npz of model inputs and labels.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=KEY", help="Feed model input NAME from array KEY.")
@click.option("--labels", default="y", show_default=True, help="Key of the labels (class indices; targets for mse).")
@click.option("--output-name", help="The logits output (default: the first graph output).")
@click.option("--iters", type=click.IntRange(0), default=100, show_default=True,
              help="T, NIO iterations (the authors' run: 100).")
@click.option("--batch", type=click.IntRange(2), default=128, show_default=True, help="Samples per iteration.")
@click.option("--subbatches", type=click.IntRange(2), default=4, show_default=True,
              help="D, sub-batches of each batch (authors: 4).")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="r, overlap of neighbouring sub-batches (Eq. 7; authors: 0.2).")
@click.option("--gamma", default="10", show_default=True, callback=lambda ctx, p, v: _gamma(v),
              help="Bound on the constrained gradient norm (authors: 10 on the mean sub-batch norm); "
                   "auto: twice the starting norm.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.003, show_default=True,
              help="tau, step on the coefficients (authors: Adam, 0.003).")
@click.option("--variant", type=click.Choice(["authors", "paper"]), default="authors", show_default=True,
              help="authors: their released run (off-diagonal GradCosine + sum of norms, Adam, clip 1, min 0.01 "
                   "weights / 0 biases); paper: Algorithm 3 as written (max-norm constraint, plain steps).")
@click.option("--start", type=click.Choice(["autoinit", "keep"]), default="autoinit", show_default=True,
              help="autoinit: start from AutoInit's weights; keep: from the model's own.")
@click.option("--loss", type=click.Choice(["ce", "mse"]), default="ce", show_default=True)
@click.option("--differences", type=click.Choice(["forward", "central"]), default="forward", show_default=True,
              help="Hessian-vector products by forward differences of gradients (D more gradients, ~3e-4 "
                   "relative error) or central ones (2D, ~1e-4; slower).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--export-training-graph", "training_graph", type=click.Path(path_type=Path),
              help="Also write the training graph (forward, loss, gradients; weights as inputs) here.")
@_output_options
def nio(model, output, data, inputs, labels, output_name, iters, batch, subbatches, overlap, gamma, lr, variant,
        start, loss, differences, seed, device, training_graph, external_data, in_place, json_path, quiet, debug):
    """NIO: one scale per weight tensor, raising GradCosine + gradient norm under a norm bound
    (ONNX Runtime's training build)."""
    import json

    from .nio import nio as run
    try:
        _check_outputs([model, data], output, in_place, [json_path, training_graph])
        input_map = {key: name for name, key in _input_map(inputs).items()}
        with click.progressbar(length=iters, label="NIO", file=sys.stderr,
                               item_show_func=lambda text: text) as bar:
            def progress(it, gc, gn, max_norm):
                bar.update(1, f"GC {gc:.4f}  GN {gn:.4g}  max norm {max_norm:.4g}")
            new, report = run(model, data, input_map=input_map or None, labels=labels, output_name=output_name,
                              iters=iters, batch=batch, subbatches=subbatches, overlap=overlap, gamma=gamma, lr=lr,
                              seed=seed, start=start, variant=variant, loss=loss, device=device,
                              differences=differences, progress=None if quiet else progress)
        if training_graph:
            from .train.graph import export_training_graph
            export_training_graph(new, training_graph, output_name=output_name, loss=loss)
        from .model_io import save_model
        save_model(new, output, external_data=True if external_data else None)
        if json_path:
            document = {"schema": "onnxinit-nio", "schema_version": 1, "command": "nio", "model": str(model),
                        "output": str(output), **report}
            save_text(json_path, json.dumps(document, indent=2, default=float))
        if not quiet:
            click.echo(nio_summary(model, output, report), err=_json_on_stdout(json_path))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


def nio_summary(model, output, report: dict) -> str:
    b, a = report["before"], report["after"]
    lines = [f"onnxinit nio: {model} -> {output}",
             f"  GradCosine {b['gc']:.4f} -> {a['gc']:.4f}; gradient norm (B-GN) {b['gn']:.4g} -> {a['gn']:.4g}; "
             f"constrained norm {b['mean_norm' if report['options']['variant'] == 'authors' else 'max_norm']:.4g} -> "
             f"{a['mean_norm' if report['options']['variant'] == 'authors' else 'max_norm']:.4g} (gamma "
             f"{report['gamma']:.4g})",
             f"  {report['options']['iters']} iterations, {report['repair_steps']} repair steps, "
             f"{report['seconds']:.1f} s on {', '.join(report['options']['providers'])}"]
    if report.get("stopped"):
        lines.append(f"  stopped: {report['stopped']}")
    lines.append("  coefficient per weight tensor:")
    for name, value in report["coefficients"].items():
        lines.append(f"    {name}: {float(value):.4f}")
    return "\n".join(lines)


@cli.command("export-weights")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="weights.safetensors or weights.npz")
@click.option("--names", type=click.Choice(["onnx", "source"]), default="onnx", show_default=True,
              help="source: key tensors by the source framework's parameter names where the graph keeps them "
                   "(PyTorch state_dict keys, Linear weights transposed back), for model.load_state_dict.")
@click.option("-q", "--quiet", is_flag=True, help="No summary.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export_weights(model, output, names, quiet, debug):
    """Write every float initializer of MODEL to a .safetensors or .npz file."""
    from .export_weights import export_weights as run
    from .model_io import load_model
    try:
        _check_outputs([model], output)
        entries = run(load_model(model), output, names=names)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)
    if not quiet:
        mapped = sum(e.source_name is not None for e in entries)
        click.echo(f"{len(entries)} float tensors written to {output}; {mapped} with a source name")
        for e in entries:
            if e.source_name is None:
                click.echo(f"  no source name: {e.onnx_name}")


def _common_signal_options(f):
    for option in reversed([
        click.option("--measure", "measure_signal", is_flag=True,
                     help="Also run the model in ONNX Runtime and measure every listed tensor."),
        click.option("--batch", type=click.IntRange(1), default=16, show_default=True,
                     help="Samples of N(input-mean, input-var) when measuring without --data."),
        click.option("--data", type=click.Path(path_type=Path), help=".npz of input arrays, by input name."),
        _DIM_OPTION,
        click.option("--min-var", type=float, default=0.1, show_default=True),
        click.option("--max-var", type=float, default=10.0, show_default=True),
        click.option("--rules", "rules", type=click.Path(path_type=Path), multiple=True),
        click.option("--input-mean", type=float, default=0.0, show_default=True),
        click.option("--input-var", type=float, default=1.0, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--json", "json_path", type=click.Path(path_type=Path),
                     help="Write the report as JSON (docs/report-schema.json); - for standard output."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]):
        f = option(f)
    return f


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@_common_signal_options
@click.option("--all", "all_tensors", is_flag=True, help="Every signal tensor, not only weighted layers and joins.")
@click.option("--rows", type=click.IntRange(0), default=60, show_default=True,
              help="Rows shown before the table is cut (flagged rows always show); 0 shows all.")
@click.option("--mismatch", type=float, default=1.5, show_default=True,
              help="Flag a measured variance off the prediction by more than this factor.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Variance per layer as a PNG.")
@click.option("--compare", type=click.Path(path_type=Path), multiple=True, help="Overlay other models in the plot.")
def inspect(model, measure_signal, batch, data, sizes, min_var, max_var, rules, input_mean, input_var, device,
            json_path, debug, all_tensors, rows, mismatch, plot_path, compare):
    """Per-layer signal statistics of MODEL: predicted, and measured with --measure."""
    from .inspect import inspect_model, table
    try:
        kwargs = dict(measure_signal=measure_signal, batch=batch, data=data, rules=rules, input_mean=input_mean,
                      input_var=input_var, all_tensors=all_tensors, min_var=min_var, max_var=max_var,
                      mismatch=mismatch, device=device, sizes=sizes)
        _check_outputs([model, data, *compare], reports=[plot_path, json_path])
        result = inspect_model(model, **kwargs)
        others = [inspect_model(m, **kwargs) for m in compare]
        click.echo(table(result, limit=rows or None), err=_json_on_stdout(json_path))
        if plot_path:
            from .plot import plot_variance
            plot_variance([result] + others, [model.name] + [m.name for m in compare], plot_path)
            click.echo(f"plot written to {plot_path}", err=_json_on_stdout(json_path))
        if json_path:
            save_text(json_path, result.report.to_json())
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@_common_signal_options
@click.option("--verbose", is_flag=True, help="Print the summary even when every layer is in band.")
def check(model, measure_signal, batch, data, sizes, min_var, max_var, rules, input_mean, input_var, device,
          json_path, debug, verbose):
    """Exit 0 when every weighted layer's variance is in [--min-var, --max-var], 1 when not, 2 on bad input."""
    from .inspect import inspect_model
    try:
        _check_outputs([model, data], reports=[json_path])
        result = inspect_model(model, measure_signal=measure_signal, batch=batch, data=data, rules=rules,
                               input_mean=input_mean, input_var=input_var, min_var=min_var, max_var=max_var,
                               command="check", device=device, sizes=sizes)
        offending = result.offending
        result.report.extra["check"] = {"passed": not offending, "offending": [r.node for r in offending]}
        if json_path:
            save_text(json_path, result.report.to_json())
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line and exit 2 (130 on Ctrl-C)
        _fail(exc, debug)
    s = result.summary_dict()
    kind = "measured" if measure_signal else "predicted"
    err = _json_on_stdout(json_path)
    if offending:
        click.echo(f"check failed: {len(offending)} of {s['weighted_layers']} weighted layers have a {kind} "
                   f"variance outside [{min_var:g}, {max_var:g}]", err=err)
        for r in offending:
            click.echo(f"  {r.node} ({r.op_type}): variance {r.variance:.4g}", err=err)
        sys.exit(1)
    if verbose:
        click.echo(f"check passed: {s['weighted_layers']} weighted layers, {kind} variance in "
                   f"[{min_var:g}, {max_var:g}]", err=err)


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


def _json_on_stdout(json_path) -> bool:
    """--json - puts the report on standard output; the human-readable lines then go to stderr."""
    return json_path is not None and str(json_path) == "-"


def save_text(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically; "-" is standard output."""
    if str(path) == "-":
        click.echo(text)
        return
    from .model_io import atomic_output
    with atomic_output(path, mode="w") as f:
        f.write(text)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner cancelling a job): unwound like Ctrl-C, so temp files go."""


def _terminate(signum, frame):
    raise Terminated()


def _interrupted(exc=None):
    click.echo("interrupted; no output written", err=True)
    sys.exit(143 if isinstance(exc, Terminated) else 130)


def _fail(exc, debug):
    if isinstance(exc, KeyboardInterrupt):
        _interrupted(exc)
    if debug:
        traceback.print_exc()
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, MemoryError):
        message = f"out of memory ({lines[0] if lines else 'the model declares tensors too large to hold'})"
    else:
        message = lines[0] if lines else type(exc).__name__
    click.echo(f"error: {message}", err=True)   # one line; --debug shows the rest
    sys.exit(2)


def main():
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt as exc:
        _interrupted(exc)


if __name__ == "__main__":
    main()
