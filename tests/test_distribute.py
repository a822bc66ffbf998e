"""tf.distribute: MirroredStrategy over 2 logical CPUs, and 2 real workers with TF_CONFIG."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import tiny_recipe, write_class_folders, write_recipe

TINY_CLI = [sys.executable, str(pathlib.Path(__file__).with_name("tiny_backbone.py"))]


def _recipe(tmp_path, photos, runs, **distribute):
    recipe = tiny_recipe(photos, runs)
    recipe["train"]["head"]["epochs"] = 3
    recipe["train"]["fine_tune"]["epochs"] = 1
    if distribute:
        recipe["distribute"] = distribute
    return write_recipe(tmp_path / f"{runs.name}.yaml", recipe)


def _metrics(runs):
    return json.loads(next(runs.glob("*/metrics.json")).read_text())


@pytest.mark.slow  # a minute or more on 2 cores: CI runs it with -m slow
def test_mirrored_over_two_logical_cpus_matches_the_single_device_run(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=12)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TINY_LOGICAL_CPUS": "2"}
    single, mirrored = tmp_path / "single", tmp_path / "mirrored"
    subprocess.run(TINY_CLI + ["fit", str(_recipe(tmp_path, photos, single))], env=env, check=True,
                   capture_output=True, timeout=300)
    out = subprocess.run(TINY_CLI + ["fit", str(_recipe(tmp_path, photos, mirrored, strategy="mirrored",
                                                        devices=["/cpu:0", "/cpu:1"]))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = _metrics(single), _metrics(mirrored)
    assert two["distribute"] == {"strategy": "mirrored", "replicas": 2, "global_batch": 8, "per_replica_batch": 4,
                                 "lr_scaling": "none", "lr_factor": 1.0}
    assert two["val_top1"] == pytest.approx(one["val_top1"], abs=0.25)  # documented tolerance
    import keras

    head = lambda runs: keras.saving.load_model(next(runs.glob("*/model.keras"))).get_layer("predictions")  # noqa
    assert [w.shape for w in head(mirrored).get_weights()] == [w.shape for w in head(single).get_weights()]


def test_multi_worker_is_refused_cleanly_until_keras_supports_it(tmp_path):
    """keras-team/keras#20585: Keras 3 fit fails under MultiWorkerMirroredStrategy (seen with 2 local workers)."""
    photos = write_class_folders(tmp_path / "photos", per_class=4)
    recipe = _recipe(tmp_path, photos, tmp_path / "runs", strategy="multi_worker")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})}
    out = subprocess.run(TINY_CLI + ["fit", str(recipe)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "keras-team/keras#20585" in out.stderr
    assert not (tmp_path / "runs").exists()
