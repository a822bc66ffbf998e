"""`retail-vision`: a thin click skin over the Python API.

Each command imports the package lazily, so `retail-vision --help` never loads TensorFlow.
Exit codes: 0 success; 2 bad input (one line on stderr naming what to fix); 1 unexpected failure.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from retail_vision.recipe import TFLITE_KINDS, ExportConfig

BAD_INPUT = 2
_EXPORT_DEFAULTS = ExportConfig()


def _user_errors_exit_2(command):
    """A UserError becomes one line on stderr and exit 2; a failed parity gate, one line and exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from retail_vision.errors import ParityError, UserError

        try:
            return command(*args, **kwargs)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(BAD_INPUT)
        except ParityError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


def _quiet_tensorflow():
    """Load TensorFlow without its C++ log lines (oneDNN, CUDA stubs, cuInit) on the user's terminal.

    Its absl logging writes the start-up lines to file descriptor 2 before any log level applies,
    so that descriptor points at /dev/null while TensorFlow loads and looks for devices. A Python
    error raised meanwhile still reaches stderr: it prints after the descriptor is restored.
    TF_CPP_MIN_LOG_LEVEL=0 in the environment keeps the later lines, for debugging a GPU setup.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its kernel notes too; errors still raise in Python
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retail-vision")
def main():
    """Turn folders of product photos into product recognizers (Keras, TF Serving, TFLite)."""
    # Progress lines reach a log file as they happen, not in 8 KB blocks.
    sys.stdout.reconfigure(line_buffering=True)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "runs_dir", type=click.Path(file_okay=False), help="Runs folder (default: recipe's output.runs_dir).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.head.epochs=1.")
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[RUN_DIR]",
              help="Continue RUN_DIR, or the latest unfinished run of RECIPE, from its last completed epoch.")
@_user_errors_exit_2
def fit(recipe, runs_dir, overrides, resume):
    """Train a classifier from RECIPE (YAML) and write a run directory."""
    from retail_vision.recipe import Recipe

    loaded = Recipe.from_yaml(recipe, list(overrides))
    _quiet_tensorflow()
    from retail_vision.training import fit as run_fit

    try:
        result = run_fit(loaded, runs_dir=runs_dir, resume=True if resume == "" else resume or False)
    except KeyboardInterrupt:
        again = " ".join(["retail-vision fit", recipe, *(f"--set {o}" for o in overrides),
                          *(["--output", runs_dir] if runs_dir else []), "--resume"])
        click.echo(f"\ninterrupted: every completed epoch is saved; continue with: {again}", err=True)
        sys.stderr.flush()
        # Leave without interpreter teardown: TensorFlow's threads, stopped mid-step by the
        # interrupt, crashed it now and then (SIGSEGV). Everything worth keeping is on disk.
        os._exit(130)
    if result.run_dir:  # None on the non-chief workers of a multi-worker run
        click.echo(result.run_dir)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@_user_errors_exit_2
def check(recipe, overrides):
    """Check RECIPE against its data and backbone, and print the plan, without training."""
    from retail_vision.recipe import Recipe

    loaded = Recipe.from_yaml(recipe, list(overrides))
    _quiet_tensorflow()
    from retail_vision.planning import estimate_seconds, plan

    the_plan = plan(loaded)
    click.echo(f"recipe:     {recipe} (valid)")
    for line in the_plan.describe():
        click.echo(line)
    stages = ", ".join(f"{stage} ~{_duration(seconds)}" for stage, seconds in estimate_seconds(the_plan).items())
    click.echo(f"expected:   {stages} (rough: a timed forward pass on this machine, scaled)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@main.command()
@click.argument("model", type=click.Path())
@click.argument("data", type=click.Path(), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (the metrics) on stdout.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write report.md, metrics.json, predictions.csv and the plots to this folder.")
@click.option("--class-names", type=click.Path(dir_okay=False), help="Class-name file for a manifest of label ids.")
@click.option("--hierarchy", type=click.Path(dir_okay=False),
              help="Fine -> coarse CSV like Grocery Store's classes.csv (default: one found next to DATA).")
@click.option("--classes", type=click.Choice(["all", "known"]), default="all", show_default=True,
              help="all: photos of classes the model does not know are scored as unknown products; known: left out.")
@_user_errors_exit_2
def evaluate(model, data, as_json, report_dir, class_names, hierarchy, classes):
    """Score MODEL (run dir, .keras, SavedModel, .tflite) on DATA (folder or manifest; default: a run's validation files)."""
    import json

    _quiet_tensorflow()
    from retail_vision.evaluation.evaluator import evaluate as run_evaluate
    from retail_vision.evaluation.report import format_summary

    results = run_evaluate(model, data, report_dir=report_dir, class_names=class_names, hierarchy=hierarchy,
                           classes=classes)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(format_summary(results))
        if report_dir:
            click.echo(f"report:  {report_dir}/report.md")


@main.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--output", help=f"Folder of exported models (default: the run recipe's export.output, else "
                                f"{_EXPORT_DEFAULTS.output}).")
@click.option("--name", help="Model name (default: the recipe's name, or the .keras file's).")
@click.option("--tflite", is_flag=True, help="Also write TFLite files (all four kinds unless --quantize).")
@click.option("--quantize", help=f"Comma-separated TFLite kinds: {','.join(TFLITE_KINDS)}.")
@click.option("--data", type=click.Path(exists=True),
              help="Held-out images (folder or manifest) for the parity check; the temperature is fitted again on them.")
@click.option("--allow-drop", is_flag=True, help="Publish even if int8 loses more than export.max_int8_drop points.")
@click.option("--max-int8-drop", type=float,
              help=f"Allowed int8 top-1 drop, points (default: the run recipe's export.max_int8_drop, else "
                   f"{_EXPORT_DEFAULTS.max_int8_drop}).")
@_user_errors_exit_2
def export(model, output, name, tflite, quantize, data, allow_drop, max_int8_drop):
    """Export MODEL (run dir or .keras) for TF Serving and, with --tflite, for devices."""
    _quiet_tensorflow()
    from retail_vision.export import export_model

    kinds = tuple(k.strip() for k in quantize.split(",") if k.strip()) if quantize else ()
    if tflite and not kinds:
        kinds = TFLITE_KINDS
    result = export_model(model, output=output, name=name, tflite_kinds=kinds, data=data,
                          allow_drop=allow_drop, max_int8_drop=max_int8_drop, recalibrate=data is not None)
    click.echo(result.version_dir)


@main.command()
@click.argument("model", type=click.Path())
@click.argument("photos", type=click.Path(), required=False)
@click.option("--output", help="Folder of exported models (default: the version's own, or the run recipe's export.output).")
@click.option("--name", help="Model name (default: the source's).")
@click.option("--replace", is_flag=True, help="Re-learn classes the model already has from PHOTOS.")
@click.option("--remove", multiple=True, metavar="LABEL", help="Drop a class (repeat for several).")
@click.option("--class-names", type=click.Path(dir_okay=False), help="Class-name file for a manifest of label ids.")
@click.option("--max-known-drop", type=click.FloatRange(min=0.0),
              help="Points of top-1 the known classes' validation photos may lose to the new classes (default 1.0); "
              "more lets the new classes win more photos.")
@_user_errors_exit_2
def enroll(model, photos, output, name, replace, remove, class_names, max_known_drop):
    """Teach MODEL (run dir or exported version) the products in PHOTOS (one folder per product), no training.

    Writes the next export version; its folder is the last line on stdout.
    """
    _quiet_tensorflow()
    from retail_vision.enrollment import enroll as run_enroll

    chosen = {} if max_known_drop is None else {"max_known_drop": max_known_drop}
    result = run_enroll(model, photos, output=output, name=name, replace=replace, remove=tuple(remove),
                        class_names=class_names, **chosen)
    click.echo(result.version_dir)


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--imagenet", is_flag=True, help="MODEL is a backbone name: run it with its ImageNet head.")
@_user_errors_exit_2
def predict(model, images, top_k, as_json, imagenet):
    """Predict the classes of IMAGES (files or folders) with MODEL (run dir, .keras, SavedModel, .tflite)."""
    import json

    _quiet_tensorflow()
    from retail_vision.prediction import as_json as to_json
    from retail_vision.prediction import as_text
    from retail_vision.prediction import predict as run_predict

    predictions, failures = run_predict(model, list(images), top_k=top_k, imagenet=imagenet)
    if as_json:
        click.echo(json.dumps(to_json(predictions, failures), indent=2))
    else:
        for prediction in predictions:
            click.echo(as_text(prediction))
    for file, reason in failures:
        click.echo(f"error: {file}: {reason}", err=True)
    if failures:
        sys.exit(BAD_INPUT)


@main.command(name="backbones")
def list_backbones():
    """List the backbones, their input sizes and where their weights come from."""
    from retail_vision import backbones

    rows = [(spec.name, str(spec.input_size), spec.weight_source) for spec in map(backbones.get, backbones.names())]
    widths = [max(len(row[i]) for row in rows + [("backbone", "size", "imagenet weights")]) for i in range(3)]
    for row in [("backbone", "size", "imagenet weights")] + rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
