"""Table of broken recipes: `fit` and `check` both exit 2 with the same one line naming the dotted path, write nothing; several mistakes come in one error."""

import os
import subprocess
import sys

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
    ("augment.crop_area", 0, "augment.crop_area: received 0"),
    ("augment.rand_augment", 1.5, "augment.rand_augment: received 1.5"),
    ("augment.mix", "blend", "augment.mix: received 'blend'; expected one of 'none', 'mixup', 'cutmix'"),
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
    ("export.tflite", "int8", "export.tflite: received 'int8'; expected a list of 'float32', 'float16', 'dynamic'"),
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
def test_broken_recipe_exits_2_with_one_line_naming_the_path_and_check_says_the_same(photos, tmp_path, where, value,
                                                                                      message):
    recipe = tiny_recipe(photos, tmp_path / "runs")
    _set(recipe, where, value)
    recipe_file = str(write_recipe(tmp_path / "r.yaml", recipe))
    said = {}
    for verb in ("check", "fit"):
        result = CliRunner().invoke(main, [verb, recipe_file])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2, (verb, result.output[-500:])
        assert len(errors) == 1 and message in errors[0], (verb, errors)
        said[verb] = errors[0]
    assert said["check"] == said["fit"]
    assert not (tmp_path / "runs").exists()


def test_three_mistakes_in_the_schema_are_reported_together(photos, tmp_path):
    recipe = tiny_recipe(photos, tmp_path / "runs")
    for where, value in (("train.head.epoch", 3), ("model.dropout", 1.5), ("augment.flip", "diagonal")):
        _set(recipe, where, value)
    result = CliRunner().invoke(main, ["fit", str(write_recipe(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 2
    error = result.output[result.output.index("error:"):].splitlines()
    assert error[0] == f"error: {tmp_path / 'r.yaml'}: 3 problems:"
    assert [line.split(":")[0].strip() for line in error[1:4]] == ["model.dropout", "augment.flip", "train.head.epoch"]


def test_three_mistakes_against_the_data_and_backbone_are_reported_together(photos, tmp_path):
    recipe = tiny_recipe(photos, tmp_path / "runs")
    _set(recipe, "data.validation", str(tmp_path / "no-such-folder"))  # the data
    _set(recipe, "train.fine_tune.unfreeze", "conv9")  # the backbone
    _set(recipe, "train.head.cache_features", True)  # the strategy
    _set(recipe, "distribute.strategy", "tpu")
    result = CliRunner().invoke(main, ["check", str(write_recipe(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 2
    error = result.output[result.output.index("error:"):].splitlines()
    assert error[0].endswith("r.yaml: 3 problems:"), error
    assert "train.head.cache_features: true is not supported with distribute.strategy 'tpu'" in error[1]
    assert "no-such-folder: no such folder" in error[2]
    assert "train.fine_tune.unfreeze: no layer named 'conv9'" in error[3]


def test_an_unknown_backbone_is_found_before_tensorflow_loads(photos, tmp_path):
    recipe = tiny_recipe(photos, tmp_path / "runs")
    _set(recipe, "model.backbone", "resnet50")
    recipe_file = write_recipe(tmp_path / "r.yaml", recipe)
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "retail_vision.cli", "fit", str(recipe_file)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) <= 3 and lines[0].startswith(f"error: {recipe_file}: model.backbone: unknown backbone"), lines


def test_the_table_has_at_least_30_cases():
    assert len(BROKEN) >= 30
