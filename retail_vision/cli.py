"""`retail-vision`: a thin click skin over the Python API.

Each command imports the package lazily, so `retail-vision --help` never loads TensorFlow.
Exit codes: 0 success; 2 bad input (one line on stderr naming what to fix); 1 unexpected failure.
"""

from __future__ import annotations

import functools
import os
import sys

import click

BAD_INPUT = 2


def _user_errors_exit_2(command):
    """Turn a UserError into a one-line message on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from retail_vision.errors import UserError

        try:
            return command(*args, **kwargs)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(BAD_INPUT)

    return wrapper


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retail-vision")
def main():
    """Turn folders of product photos into product recognizers (Keras, TF Serving, TFLite)."""


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "runs_dir", type=click.Path(file_okay=False), help="Runs folder (default: recipe's output.runs_dir).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.head.epochs=1.")
@_user_errors_exit_2
def fit(recipe, runs_dir, overrides):
    """Train a classifier from RECIPE (YAML) and write a run directory."""
    from retail_vision.recipe import Recipe

    loaded = Recipe.from_yaml(recipe, list(overrides))
    _quiet_tensorflow()
    from retail_vision.training import fit as run_fit

    result = run_fit(loaded, runs_dir=runs_dir)
    click.echo(result.run_dir)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@_user_errors_exit_2
def check(recipe, overrides):
    """Validate RECIPE and scan its data without training."""
    from retail_vision import backbones
    from retail_vision.recipe import Recipe

    loaded = Recipe.from_yaml(recipe, list(overrides))
    spec = backbones.get(loaded.model.backbone)
    if loaded.data.source.startswith("tfds:"):
        _quiet_tensorflow()
    from retail_vision.data.training_data import resolve_training_data

    data = resolve_training_data(loaded.data, loaded.train.seed)
    click.echo(f"recipe:     {recipe} (valid)")
    click.echo(f"backbone:   {spec.name}, {loaded.data.image_size or spec.input_size} px, weights {loaded.model.weights}")
    click.echo(f"classes:    {len(data.class_names)}")
    click.echo(f"train:      {data.train_count} images")
    click.echo(f"validation: {data.validation_count} images")
    click.echo(f"skipped:    {len(data.skipped)} files")
    for skipped in data.skipped:
        click.echo(f"  {skipped.path}: {skipped.reason}")
    counts = data.train_class_counts()
    if counts:
        smallest = min(counts, key=counts.get)
        largest = max(counts, key=counts.get)
        click.echo(f"per class:  {counts[smallest]} ({smallest}) to {counts[largest]} ({largest}) train images")


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
