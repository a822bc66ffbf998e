"""tf.distribute: MirroredStrategy over 2 logical CPUs, and 2 real workers with TF_CONFIG."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from retail_vision.cli import main

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


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow  # about a minute on 2 cores
def test_two_workers_train_and_only_the_chief_keeps_files(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=12)
    recipe = _recipe(tmp_path, photos, tmp_path / "recipe-runs", strategy="multi_worker")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        (folder / "tmp").mkdir(parents=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(folder / "tmp"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = TINY_CLI + ["fit", str(recipe), "--set", f"output.runs_dir={folder / 'runs'}",
                              "--set", "export.enabled=true", "--set", f"export.output={folder / 'exported'}"]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [worker.communicate(timeout=240) for worker in workers]  # one bound for both: they run in step
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]

    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    (run_dir,) = (chief / "runs").iterdir()
    assert outputs[0][0].splitlines()[-1] == str(run_dir) and str(tmp_path) not in outputs[1][0]
    # Epoch logs are summed over both workers, so both take the same decisions (best epoch, early stopping).
    val_accuracy = [re.findall(r"val_accuracy: ([0-9.]+)", stdout) for stdout, _ in outputs]
    assert len(val_accuracy[0]) == 4 and val_accuracy[0] == val_accuracy[1]
    metrics = _metrics(chief / "runs")
    assert metrics["distribute"] == {"strategy": "multi_worker", "replicas": 2, "global_batch": 8,
                                     "per_replica_batch": 4, "lr_scaling": "none", "lr_factor": 1.0}
    assert [phase["epochs"] for phase in metrics["phases"].values()] == [3, 1]
    assert metrics["val_top1"] >= 0.5 and metrics["val_images"] == 9  # 3 colours: chance is 1/3
    import keras

    assert keras.saving.load_model(run_dir / "model.keras").output_shape == (None, 3)
    assert (chief / "exported" / "tiny").is_dir() and metrics["export"].startswith(str(chief / "exported"))
    # The other worker trained in a temporary folder that is gone, and wrote nothing else.
    assert not (other / "runs").exists() and not (other / "exported").exists()
    assert not (tmp_path / "recipe-runs").exists()  # both took the runs folder from --set
    assert list((other / "tmp").iterdir()) == []


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["a:1"], "worker": ["b:1"]}, "chief", 0, True),
    ({"chief": ["a:1"], "worker": ["b:1"]}, "worker", 0, False),
    ({}, None, None, True),  # no TF_CONFIG: this host alone
])
def test_the_chief_is_task_chief_or_else_worker_0(cluster, task_type, task_id, chief):
    import tensorflow as tf

    from retail_vision.distribution import _is_chief

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
    assert _is_chief(resolver) is chief


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume: not supported with distribute.strategy multi_worker"),
    (["--set", "train.head.cache_features=true"],
     "train.head.cache_features: true is not supported with distribute.strategy 'multi_worker'"),
])
def test_multi_worker_refuses_what_it_cannot_do_with_one_line(tmp_path, args, message):
    photos = write_class_folders(tmp_path / "photos", per_class=4)
    recipe = _recipe(tmp_path, photos, tmp_path / "runs", strategy="multi_worker")
    result = CliRunner().invoke(main, ["fit", str(recipe), *args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output[-500:]
    assert not (tmp_path / "runs").exists()
