"""tf.distribute: MirroredStrategy over 2 logical CPUs, and 2 real workers with TF_CONFIG."""

import json
import os
import pathlib
import socket
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


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_workers_train_together_and_only_the_chief_writes(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=6)
    recipe = _recipe(tmp_path, photos, tmp_path / "runs", strategy="multi_worker")
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        cwd = tmp_path / f"worker{index}"
        cwd.mkdir()
        workers.append(subprocess.Popen(TINY_CLI + ["fit", str(recipe)], env=env, cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=240)[0])
    finally:
        for worker in workers:
            worker.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # the chief's run directory, and nothing from worker 1
    metrics = _metrics(tmp_path / "runs")
    assert metrics["distribute"]["replicas"] == 2 and metrics["distribute"]["strategy"] == "multi_worker"
    assert not any(pathlib.Path("/tmp").glob("retail-vision-worker-*"))
