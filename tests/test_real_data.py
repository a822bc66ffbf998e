"""Acceptance on the real Grocery Store photos (../shared/datasets/grocery_store): `pytest -m real_data`."""

import json

import pytest
from click.testing import CliRunner

from retail_vision.cli import main

from conftest import REPO

pytestmark = pytest.mark.real_data
RECIPE = REPO / "recipes" / "grocery_store.yaml"


def test_check_finds_81_classes_and_the_split_counts():
    result = CliRunner().invoke(main, ["check", str(RECIPE)])
    assert result.exit_code == 0, result.output
    assert "classes:    81" in result.output
    assert "train:      2640 images" in result.output
    assert "validation: 296 images" in result.output


def test_fit_mobilenet_v3_small_one_epoch_per_phase(tmp_path):
    result = CliRunner().invoke(main, [
        "fit", str(RECIPE), "--output", str(tmp_path),
        "--set", "model.backbone=mobilenet_v3_small", "--set", "model.weights=none",
        "--set", "train.head.epochs=1", "--set", "train.fine_tune.epochs=1",
        "--set", "train.fine_tune.unfreeze=all", "--set", "train.early_stopping.patience=0",
        "--set", "data.image_size=224",  # the recipe's 320 px is for Lite2's accuracy; this checks plumbing
    ])
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == 81 and metrics["train_images"] == 2640 and metrics["val_images"] == 296
    assert [metrics["phases"][p]["epochs"] for p in ("head", "fine_tune")] == [1, 1]
    assert len((run_dir / "labels.txt").read_text().split()) == 81
    assert (run_dir / "model.keras").stat().st_size > 1_000_000
