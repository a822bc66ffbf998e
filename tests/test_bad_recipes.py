"""Table of broken recipes: each exits 2 with one line that names the dotted path, and writes nothing."""

import pytest
from click.testing import CliRunner

from retail_vision.cli import main

from conftest import tiny_recipe, write_class_folders, write_recipe

# (where to change the tiny recipe, the value, the text the one-line error must hold)
BROKEN = [
    ("name", "", "name: received ''"),
    ("name", ["a"], "name: received ['a']"),
    ("colour", "red", "colour: unknown key"),
    ("data", "photos", "data: expected a section"),
    ("data.sorce", "x", "data.sorce: unknown key; did you mean 'source'?"),
    ("data.validation", True, "data.validation: received True"),
    ("data.validation", 1.5, "data.validation: received 1.5"),
    ("data.image_size", 8, "data.image_size: received 8"),
    ("data.image_size", "big", "data.image_size: received 'big'"),
    ("data.resize", "stretch", "data.resize: received 'stretch'; expected one of 'crop', 'pad'"),
    ("data.cache", "yes", "data.cache: received 'yes'"),
    ("model.backbone", "resnet50", "model.backbone: unknown backbone 'resnet50'"),
    ("model.weights", 5, "model.weights: received 5"),
    ("model.dropout", 1.5, "model.dropout: received 1.5"),
    ("model.dropuot", 0.1, "model.dropuot: unknown key; did you mean 'dropout'?"),
    ("augment.flip", "diagonal", "augment.flip: received 'diagonal'"),
    ("augment.rotation", -0.1, "augment.rotation: received -0.1"),
    ("augment.zoom", 2, "augment.zoom: received 2"),
    ("augment.enabled", "off", "augment.enabled: received 'off'"),
    ("train.batch_size", 0, "train.batch_size: received 0"),
    ("train.batch_size", 500, "train.batch_size: 500 is more than the 18 training images"),
    ("train.optimizer", "adagrad", "train.optimizer: received 'adagrad'"),
    ("train.label_smoothing", 1.0, "train.label_smoothing: received 1.0"),
    ("train.class_weights", "balanced", "train.class_weights: received 'balanced'"),
    ("train.head.epochs", -1, "train.head.epochs: received -1"),
    ("train.head.learning_rate", 0, "train.head.learning_rate: received 0"),
    ("train.head.epoch", 3, "train.head.epoch: unknown key; did you mean 'epochs'?"),
    ("train.head.cache_features", "maybe", "train.head.cache_features: received 'maybe'"),
    ("train.fine_tune.unfreeze", 2.5, "train.fine_tune.unfreeze: received 2.5"),
    ("train.fine_tune.unfreeze", 10**6, "train.fine_tune.unfreeze: received 1000000; the backbone has"),
    ("train.fine_tune.unfreeze", "conv9", "train.fine_tune.unfreeze: no layer named 'conv9'"),
    ("train.fine_tune.unfreeze", 3, "train.fine_tune.unfreeze: 3 with model.weights 'none' leaves"),
    ("train.fine_tune.batchnorm", "frozn", "train.fine_tune.batchnorm: received 'frozn'"),
    ("train.fine_tune.warmup_epochs", -1, "train.fine_tune.warmup_epochs: received -1"),
    ("train.early_stopping.patience", -2, "train.early_stopping.patience: received -2"),
    ("train.early_stop", {}, "train.early_stop: unknown key; did you mean 'early_stopping'?"),
    ("export.tflite", ["int4"], "export.tflite.0: received 'int4'"),
    ("export.tflite", "int8", "export.tflite: received 'int8'"),
    ("export.max_int8_drop", -1, "export.max_int8_drop: received -1"),
    ("output.runs", "x", "output.runs: unknown key; did you mean 'runs_dir'?"),
]


def _set(recipe, dotted, value):
    parts = dotted.split(".")
    node = recipe
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("bad-recipes") / "photos")


@pytest.mark.parametrize("where, value, message", BROKEN, ids=[f"{w}={v!r}"[:40] for w, v, _ in BROKEN])
def test_broken_recipe_exits_2_with_one_line_naming_the_path(photos, tmp_path, where, value, message):
    recipe = tiny_recipe(photos, tmp_path / "runs")
    _set(recipe, where, value)
    result = CliRunner().invoke(main, ["fit", str(write_recipe(tmp_path / "r.yaml", recipe))])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output[-500:]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "runs").exists()


def test_the_table_has_at_least_30_cases():
    assert len(BROKEN) >= 30
