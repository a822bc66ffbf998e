"""The activation cache in files: same training as in memory, bounded reads, refused when the disk is short, resumable."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from retail_vision import Recipe, fit, planning
from retail_vision.classifier import build_classifier
from retail_vision.training import row_files

from conftest import TINY_BACKBONE, tiny_recipe, write_class_folders, write_recipe
from test_resume import TINY_CLI


def test_row_files_give_back_the_rows_written_in_any_order(tmp_path):
    rows = np.random.default_rng(0).normal(size=(10, 3, 2)).astype("float16")
    path = str(tmp_path / "rows.npy")
    writer = row_files.RowWriter(path, rows=10)
    for start in range(0, 10, 4):
        writer.append(rows[start:start + 4])
    assert not row_files.is_complete(path)  # only the temporary name until every row is in
    written = writer.finish()
    np.testing.assert_array_equal(np.load(path), rows)  # a plain .npy file
    np.testing.assert_array_equal(written.read_rows(np.array([7, 0, 7, 3])), rows[[7, 0, 7, 3]])
    np.testing.assert_array_equal(written.read_range(2, 9), rows[2:9])
    second = row_files.RowWriter(str(tmp_path / "second.npy"), rows=10)
    second.append(rows + 1)
    views = row_files.ViewFiles([written, second.finish()])
    np.testing.assert_array_equal(views.read_rows(np.array([12, 1, 19])), np.stack([rows[2] + 1, rows[1], rows[9] + 1]))


def test_a_writer_given_fewer_rows_than_promised_leaves_no_file(tmp_path):
    writer = row_files.RowWriter(str(tmp_path / "short.npy"), rows=5)
    writer.append(np.zeros((3, 2), "float32"))
    with pytest.raises(RuntimeError, match="3 rows arrived where 5 were expected"):
        writer.finish()
    assert os.listdir(tmp_path) == []


def _cut_recipe(image_folder, tmp_path, storage, **train):
    pretrained = tmp_path / "tiny.weights.h5"  # a partial unfreeze needs weights other than 'none'
    if not pretrained.exists():
        build_classifier(TINY_BACKBONE, 3, "none", image_size=32).get_layer("backbone").save_weights(pretrained)
    return tiny_recipe(image_folder, tmp_path / storage, augment={"enabled": True, "flip": "horizontal"},
                       model={"weights": str(pretrained)}, train={
                           **tiny_recipe("", "")["train"], "cache_storage": storage,
                           "head": {"epochs": 2, "learning_rate": 0.05, "augmented_views": 2},
                           "fine_tune": {"epochs": 2, "learning_rate": 0.05, "warmup_epochs": 0, "unfreeze": "conv2"},
                           **train})


def test_a_cache_on_disk_trains_the_same_model_as_one_in_memory(image_folder, tmp_path):
    results = {storage: fit(Recipe.from_dict(_cut_recipe(image_folder, tmp_path, storage)), verbose=0)
               for storage in ("memory", "disk")}
    memory, disk = results["memory"], results["disk"]
    assert memory.metrics["activation_cache"]["storage"] == "memory"
    assert disk.metrics["activation_cache"]["storage"] == "disk"
    assert disk.metrics["activation_cache"]["gigabytes"] == memory.metrics["activation_cache"]["gigabytes"]
    for key in ("loss", "val_loss", "val_accuracy"):  # the same rows in the same order, epoch after epoch
        np.testing.assert_allclose(disk.history[key], memory.history[key], rtol=1e-5)
    assert not os.path.exists(os.path.join(disk.run_dir, planning.CACHE_FOLDER))  # deleted when training is done


def test_auto_storage_goes_to_disk_above_the_memory_budget_and_check_says_so(image_folder, tmp_path, monkeypatch):
    recipe = Recipe.from_dict(_cut_recipe(image_folder, tmp_path, "auto"))
    roomy = planning.plan(recipe)
    assert roomy.cache_storage == "memory" and roomy.image_cache
    assert roomy.image_bytes == 24 * 32 * 32 * 3  # every photo as uint8 pixels at the plan's size
    monkeypatch.setattr(planning, "MEMORY_SHARE", 0.0)
    the_plan = planning.plan(recipe)
    assert the_plan.cache_storage == "disk" and the_plan.memory_budget == 0 and not the_plan.image_cache
    said = {line.split(":")[0]: line for line in the_plan.describe()}
    assert "on disk in the run directory" in said["cache"]
    assert said["images"].endswith("decoded again every epoch (more than the memory budget leaves)")


def test_a_run_needing_more_disk_than_is_free_is_refused_before_it_starts(image_folder, tmp_path, monkeypatch):
    from retail_vision.cli import main

    recipe_path = write_recipe(tmp_path / "r.yaml", _cut_recipe(image_folder, tmp_path, "disk"))
    free = planning.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(planning.shutil, "disk_usage", lambda path: free._replace(free=1000))
    for verb in ("check", "fit"):
        result = CliRunner().invoke(main, [verb, str(recipe_path)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith(f"error: {recipe_path}: train.cache_storage: the activation cache needs ")
        assert "has 1 kB free" in lines[-1] and "fit --output" in lines[-1]
    assert not (tmp_path / "disk").exists()  # nothing written


def test_a_run_killed_while_caching_to_disk_reuses_the_finished_views_on_resume(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=40)
    recipe = tiny_recipe(photos, tmp_path / "runs", augment={"enabled": True, "flip": "horizontal"}, train={
        **tiny_recipe("", "")["train"], "cache_storage": "disk",
        "head": {"epochs": 2, "learning_rate": 0.05, "augmented_views": 3}, "fine_tune": {"epochs": 0}})
    recipe_path = write_recipe(tmp_path / "r.yaml", recipe)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(TINY_CLI + ["fit", str(recipe_path)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "view 1/3 cached in" in line:  # its files are complete before this line is said
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    cache_folder = next((tmp_path / "runs").glob("*")) / planning.CACHE_FOLDER
    assert (cache_folder / "train-1.npy").exists()

    resumed = subprocess.run(TINY_CLI + ["fit", str(recipe_path), "--resume"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "view 1/3 reused" in resumed.stderr
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert metrics["activation_cache"]["storage"] == "disk" and metrics["activation_cache"]["reused_files"] >= 1
    assert metrics["val_top1"] > 0.5 and not cache_folder.exists()


def test_a_long_cache_pass_says_how_far_it_is(image_folder, tmp_path, monkeypatch, capsys):
    from retail_vision import console

    monkeypatch.setattr(console, "PROGRESS_EVERY_S", 0.0)
    fit(Recipe.from_dict(tiny_recipe(image_folder, tmp_path / "runs", train={
        **tiny_recipe("", "")["train"], "batch_size": 4, "fine_tune": {"epochs": 0}})), verbose=0)
    said = [line for line in capsys.readouterr().err.splitlines() if "view 1/1: cached" in line]
    assert said and said[0].startswith("[retail-vision]   view 1/1: cached 4 of 18 images (") and "s left)" in said[0]


def test_a_view_recomputed_after_a_resume_draws_its_own_augmentation_not_the_first_views(tmp_path):
    import tensorflow as tf

    from retail_vision.recipe import AugmentConfig
    from retail_vision.training.augment import build_augmenter
    from retail_vision.training.feature_cache import FrozenActivations

    classifier = build_classifier(TINY_BACKBONE, 3, "none", dropout=0.0, image_size=32)
    images = np.random.default_rng(1).uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.eye(3, dtype="float32")[np.arange(12) % 3])).batch(4)

    def cache():  # a fresh augmenter each time, as in a new process
        augmenter = build_augmenter(AugmentConfig(flip="horizontal", rotation=0.2), seed=42)
        return FrozenActivations(classifier, None, dataset, dataset, augmenter, views=3, counts=(12, 12),
                                 folder=str(tmp_path / "activations"))

    first = cache()
    views = [first.train[0].files[v].read_range(0, 12) for v in range(3)]
    assert not np.allclose(views[1], views[2])
    first.close()
    for view in (2, 3):  # as if killed after the first view
        (tmp_path / "activations" / f"train-{view}.npy").unlink()
    resumed = cache()
    assert resumed.reused_files == 2  # the first training view and the validation images
    for view in range(3):
        np.testing.assert_allclose(resumed.train[0].files[view].read_range(0, 12), views[view], atol=1e-5)
