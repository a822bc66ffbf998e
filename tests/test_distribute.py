"""tf.distribute: MirroredStrategy over 2 logical CPUs, and 2 real workers with TF_CONFIG."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import tiny_recipe, write_class_folders, write_recipe
from tiny_backbone import build

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
    from retail_vision.artifacts import load_model  # registers the cosine head's layer, as any loader must

    head = lambda runs: load_model(str(next(runs.glob("*/model.keras"))))[0].get_layer("logits")  # noqa
    assert [w.shape for w in head(mirrored).get_weights()] == [w.shape for w in head(single).get_weights()]


def _start_workers(tmp_path, recipe, *args):
    """Two `fit` processes on this host, worker 0 and worker 1 of one TF_CONFIG cluster."""
    sockets = [socket.socket() for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]}
    for sock in sockets:
        sock.close()
    workers = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(folder / "tmp"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = TINY_CLI + ["fit", str(recipe), *(arg.format(folder=folder) for arg in args)]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return workers


def _finish(workers, timeout=240):
    """(stdout, stderr) of each worker, which must both exit 0 within `timeout` seconds (they run in step)."""
    try:
        outputs = [worker.communicate(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    return outputs


@pytest.mark.slow  # 40 to 105 s on 2 busy cores
def test_two_workers_train_and_only_the_chief_keeps_files(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=12)
    recipe = _recipe(tmp_path, photos, tmp_path / "recipe-runs", strategy="multi_worker")
    pretrained = tmp_path / "tiny.weights.h5"  # a partial, cached fine-tune needs weights other than 'none'
    build("none").save_weights(pretrained)
    outputs = _finish(_start_workers(tmp_path, recipe, "--set", "output.runs_dir={folder}/runs", "--set",
                                     "export.enabled=true", "--set", "export.output={folder}/exported",
                                     "--set", f"model.weights={pretrained}", "--set", "train.fine_tune.unfreeze=conv2",
                                     "--set", "train.fine_tune.cache_activations=true",
                                     # augmented views, random resized crops among them, cached per shard
                                     "--set", "augment.enabled=true", "--set", "augment.crop_area=0.5"))

    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    (run_dir,) = (chief / "runs").iterdir()
    assert outputs[0][0].splitlines()[-1] == str(run_dir) and str(tmp_path) not in outputs[1][0]
    # Both phases train on cached activations of the frozen conv1 (the head on their pooled top), two augmented
    # views of each photo, each worker on its own half of the 27 training photos.
    for index, (_, stderr) in enumerate(outputs):
        assert (f"caching the frozen layers' output: the input of conv2, the {14 - index} training photos of "
                f"shard {index + 1} of 2, 2 view(s) per image") in stderr
    # Epoch logs count both workers' images, so both take the same decisions (best epoch, early stopping).
    val_accuracy = [re.findall(r"val_accuracy: ([0-9.]+)", stdout) for stdout, _ in outputs]
    assert len(val_accuracy[0]) == 4 and val_accuracy[0] == val_accuracy[1]
    metrics = _metrics(chief / "runs")
    assert metrics["distribute"] == {"strategy": "multi_worker", "replicas": 2, "global_batch": 8,
                                     "per_replica_batch": 4, "lr_scaling": "none", "lr_factor": 1.0}
    assert [phase["epochs"] for phase in metrics["phases"].values()] == [3, 1]
    assert metrics["activation_cache"]["at"] == "fine_tune_cut" and metrics["activation_cache"]["shard"] == "1 of 2"
    assert metrics["activation_cache"]["train_images"] == 14 and metrics["train_images"] == 27
    assert metrics["val_top1"] >= 0.5 and metrics["val_images"] == 9  # 3 colours: chance is 1/3
    from retail_vision.artifacts import load_model  # registers the cosine head's layer, as any loader must

    assert load_model(str(run_dir))[0].output_shape == (None, 3)
    assert (chief / "exported" / "tiny").is_dir() and metrics["export"].startswith(str(chief / "exported"))
    # The other worker trained in a temporary folder that is gone, and wrote nothing else.
    assert not (other / "runs").exists() and not (other / "exported").exists()
    assert not (tmp_path / "recipe-runs").exists()  # both took the runs folder from --set
    assert list((other / "tmp").iterdir()) == []


def _epochs_done(runs) -> int:
    for state in runs.glob("*/checkpoints/state.json"):
        try:
            return len(json.loads(state.read_text())["history"].get("phase", []))
        except (ValueError, KeyError):
            return 0
    return 0


@pytest.mark.slow  # 70 to 120 s on 2 busy cores
def test_two_workers_killed_mid_run_resume_from_the_chiefs_checkpoints(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=12)
    runs = tmp_path / "runs"  # one folder that both workers see, as on a shared file system
    recipe = _recipe(tmp_path, photos, runs, strategy="multi_worker")
    workers = _start_workers(tmp_path, recipe, "--set", "train.head.cache_features=false")
    deadline = time.monotonic() + 240
    while _epochs_done(runs) < 1 and workers[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = workers[0].poll() is not None
    for worker in workers:
        worker.kill()
        worker.communicate()
    assert not ended, "worker 0 ended before it could be killed"
    done_at_kill = _epochs_done(runs)
    assert 1 <= done_at_kill < 3 and not list(runs.glob("*/metrics.json"))  # killed in the head phase

    outputs = _finish(_start_workers(tmp_path, recipe, "--set", "train.head.cache_features=false", "--resume"))
    (run_dir,) = runs.iterdir()
    history = json.loads((run_dir / "history.json").read_text())
    assert history["phase"] == ["head"] * 3 + ["fine_tune"]  # no epoch repeated or skipped
    for _, stderr in outputs:  # the other worker restored the same epoch from its copy
        assert f"phase head: 3 epochs (resuming after epoch {done_at_kill})" in stderr


@pytest.mark.parametrize("cluster, task_type, task_id, chief, position", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True, (0, 2)),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False, (1, 2)),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"], "evaluator": ["d:1"]}, "chief", 0, True, (0, 3)),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"], "evaluator": ["d:1"]}, "worker", 1, False, (2, 3)),
    ({}, None, None, True, (0, 1)),  # no TF_CONFIG: this host alone
])
def test_the_chief_is_task_chief_or_else_worker_0(cluster, task_type, task_id, chief, position):
    """And each host's shard of the cache is the input pipeline tf.distribute gives it (chief first)."""
    import tensorflow as tf

    from retail_vision.training.distribution import _is_chief, _worker_position

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
    assert _is_chief(resolver) is chief and _worker_position(resolver) == position
