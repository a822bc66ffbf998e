"""A real `retail-vision fit` killed with SIGKILL mid fine-tune resumes and ends like an uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_recipe, write_class_folders, write_recipe

TINY_CLI = [sys.executable, str(pathlib.Path(__file__).with_name("tiny_backbone.py"))]
# Epochs take ~0.1 s after the first: the runs must outlast the test's reaction to the epoch it waits for
# (a fast machine, or a busy one, finished a 6-epoch run before its Ctrl-C arrived).
FINE_TUNE_EPOCHS = 20
EPOCHS_NEVER_REACHED = 500  # for a run the test always stops


def recipe_file(tmp_path, photos, runs, fine_tune_epochs=FINE_TUNE_EPOCHS):
    recipe = tiny_recipe(photos, runs)
    recipe["train"]["head"]["epochs"] = 2
    recipe["train"]["fine_tune"] = {"epochs": fine_tune_epochs, "learning_rate": 0.01, "warmup_epochs": 1}
    recipe["augment"] = {"enabled": False}
    return write_recipe(tmp_path / f"{runs.name}.yaml", recipe)


def fine_tune_epochs_done(runs: pathlib.Path) -> int:
    for state in runs.glob("*/checkpoints/state.json"):
        try:
            return json.loads(state.read_text())["history"].get("phase", []).count("fine_tune")
        except (ValueError, KeyError):
            return 0
    return 0


@pytest.mark.slow  # a minute or more on 2 cores: CI runs it with -m slow
def test_sigkill_in_fine_tune_then_resume_matches_an_uninterrupted_run(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=40)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    straight = tmp_path / "straight"
    subprocess.run(TINY_CLI + ["fit", str(recipe_file(tmp_path, photos, straight))], env=env, check=True,
                   capture_output=True, timeout=300)
    expected = json.loads(next(straight.glob("*/metrics.json")).read_text())

    killed = tmp_path / "killed"
    recipe = recipe_file(tmp_path, photos, killed)
    process = subprocess.Popen(TINY_CLI + ["fit", str(recipe)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while fine_tune_epochs_done(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = fine_tune_epochs_done(killed)
    assert 2 <= done_at_kill < FINE_TUNE_EPOCHS
    assert not list(killed.glob("*/metrics.json"))

    resumed = subprocess.run(TINY_CLI + ["fit", str(recipe), "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {done_at_kill}" in resumed.stderr
    metrics = json.loads(next(killed.glob("*/metrics.json")).read_text())
    history = json.loads(next(killed.glob("*/history.json")).read_text())
    assert history["phase"] == ["head"] * 2 + ["fine_tune"] * FINE_TUNE_EPOCHS
    assert metrics["phases"]["fine_tune"]["epochs"] == expected["phases"]["fine_tune"]["epochs"]
    # Documented tolerance: CPU kernels are not bit-reproducible across processes.
    assert metrics["val_top1"] == pytest.approx(expected["val_top1"], abs=0.1)

    again = subprocess.run(TINY_CLI + ["fit", str(recipe), "--resume"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "already finished" in again.stderr
    assert json.loads(next(killed.glob("*/metrics.json")).read_text()) == metrics


def test_resume_without_a_run_is_a_one_line_error(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=4)
    out = subprocess.run(TINY_CLI + ["fit", str(recipe_file(tmp_path, photos, tmp_path / "none")), "--resume"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--resume: no run of 'tiny'" in out.stderr


@pytest.mark.slow  # a minute or more on 2 cores: CI runs it with -m slow
def test_ctrl_c_saves_state_exits_130_and_says_how_to_resume(tmp_path):
    photos = write_class_folders(tmp_path / "photos", per_class=40)
    runs = tmp_path / "interrupted"
    recipe = recipe_file(tmp_path, photos, runs, fine_tune_epochs=EPOCHS_NEVER_REACHED)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # SIG_DFL for SIGINT in the child: under a shell's background job (`cmd &`, as CI may run us)
    # SIGINT is inherited as ignored, and Python then installs no KeyboardInterrupt handler.
    process = subprocess.Popen(TINY_CLI + ["fit", str(recipe)], env=env, stdout=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while fine_tune_epochs_done(runs) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-1500:]
    assert "interrupted: every completed epoch is saved; continue with: retail-vision fit" in stderr
    assert stderr.rstrip().endswith("--resume")
    assert fine_tune_epochs_done(runs) >= 1 and not list(runs.glob("*/metrics.json"))


def _quick_recipe(tmp_path):
    recipe = tiny_recipe(write_class_folders(tmp_path / "photos", per_class=4), tmp_path / "runs")
    recipe["train"]["fine_tune"]["epochs"] = 0
    recipe["train"]["head"]["epochs"] = 1
    return write_recipe(tmp_path / "r.yaml", recipe)


def _fit(*args):
    from click.testing import CliRunner

    from retail_vision.cli import main

    return CliRunner().invoke(main, ["fit", *map(str, args)])


def test_resume_after_set_names_the_fields_and_the_command_that_continues(tmp_path):
    import shlex

    recipe = _quick_recipe(tmp_path)
    first = _fit(recipe, "--set", "train.head.epochs=2", "--set", "train.seed=7")
    assert first.exit_code == 0, first.output
    run = first.output.strip().splitlines()[-1]
    (pathlib.Path(run) / "metrics.json").unlink()  # as if killed before it finished
    refused = _fit(recipe, "--resume")
    assert refused.exit_code == 2
    error = refused.output[refused.output.index("error:"):].strip()
    assert "train.head.epochs was 2, now 1" in error and "train.seed was 7, now 42" in error
    command = error.split("to continue it, run: ")[1]
    assert command == f"retail-vision fit {recipe} --set train.head.epochs=2 --set train.seed=7 --resume {run}"
    resumed = _fit(*shlex.split(command)[2:])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.strip().splitlines()[-1] == run and (pathlib.Path(run) / "metrics.json").is_file()


def test_resume_takes_the_latest_unfinished_run_or_the_one_named(tmp_path):
    recipe = _quick_recipe(tmp_path)
    runs = [_fit(recipe).output.strip().splitlines()[-1] for _ in range(3)]
    assert len(set(runs)) == 3
    for run in runs[:2]:
        (pathlib.Path(run) / "metrics.json").unlink()  # the two older runs did not finish; the newest did
    latest_unfinished = _fit(recipe, "--resume")
    assert latest_unfinished.output.strip().splitlines()[-1] == runs[1], latest_unfinished.output
    named = _fit(recipe, "--resume", runs[0])
    assert named.output.strip().splitlines()[-1] == runs[0], named.output
    assert all((pathlib.Path(run) / "metrics.json").is_file() for run in runs)
    not_a_run = _fit(recipe, "--resume", tmp_path / "photos")
    assert not_a_run.exit_code == 2 and "not a run directory" in not_a_run.output
