"""SIGKILL at any moment, then `--resume`, again and again: the run still finishes with every epoch once.

Each kill lands after a seeded random line of the run's output (scan, plan, caching, any epoch,
between phases, saving the model, the report, the export) plus a seeded random fraction of a second.
"""

import json
import os
import pathlib
import queue
import random
import subprocess
import sys
import threading
import time

import pytest

from conftest import tiny_recipe, write_class_folders, write_recipe

TINY_CLI = [sys.executable, str(pathlib.Path(__file__).with_name("tiny_backbone.py"))]
HEAD_EPOCHS, FINE_TUNE_EPOCHS = 3, 3
LINES_OF_A_RUN = 45  # about what an uninterrupted run prints; kills are drawn over them


def _recipe(tmp_path):
    recipe = tiny_recipe(write_class_folders(tmp_path / "photos", per_class=10), tmp_path / "runs")
    recipe["augment"] = {"enabled": True}  # the head trains on cached augmented views: a caching stage
    recipe["train"]["head"]["epochs"] = HEAD_EPOCHS
    recipe["train"]["fine_tune"]["epochs"] = FINE_TUNE_EPOCHS
    recipe["export"] = {"enabled": True, "output": str(tmp_path / "exported")}  # an export stage at the end
    return write_recipe(tmp_path / "recipe.yaml", recipe)


def _lines(process) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # the process closed its output

    threading.Thread(target=read, daemon=True).start()
    return lines


def _run_killed_until_finished(folder, rng, kills: int) -> int:
    """One run, killed after random lines up to `kills` times and resumed after each, until it finishes.

    Returns the kills that landed (fewer when the run finished first); checks the finished run.
    """
    recipe, runs = _recipe(folder), folder / "runs"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    landed = 0
    while True:
        started = any(runs.glob("tiny-*"))
        process = subprocess.Popen(TINY_CLI + ["fit", str(recipe)] + (["--resume"] if started else []), env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, seen = _lines(process), []
        target = rng.randint(1, LINES_OF_A_RUN) if landed < kills else None
        while True:
            line = lines.get(timeout=300)
            if line is None:
                break
            seen.append(line)
            if len(seen) == target:
                time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the stage that line began
                if process.poll() is None:
                    process.kill()
                break
        process.wait(timeout=300)
        if process.returncode == -9:
            landed += 1
            continue
        # Not killed: it must have finished the run, never failed on what an earlier kill left.
        assert process.returncode == 0, "".join(seen[-40:])
        _assert_finished_once(folder)
        return landed


def _kill_and_resume(tmp_path, kills: int, seed: int) -> int:
    """Runs killed at random moments until `kills` kills have landed, each run resumed to its end."""
    rng, landed, number = random.Random(seed), 0, 0
    while landed < kills:
        number += 1
        landed += _run_killed_until_finished(tmp_path / f"run{number}", rng, kills - landed)
    return landed


def _assert_finished_once(folder):
    (run,) = list((folder / "runs").glob("tiny-*"))
    history = json.loads((run / "history.json").read_text())
    assert history["phase"] == ["head"] * HEAD_EPOCHS + ["fine_tune"] * FINE_TUNE_EPOCHS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["phases"]["head"]["epochs"] == HEAD_EPOCHS
    assert metrics["phases"]["fine_tune"]["epochs"] == FINE_TUNE_EPOCHS
    assert os.path.isfile(os.path.join(metrics["export"], "saved_model.pb"))
    assert (run / "report" / "report.md").is_file() and (run / "model.keras").is_file()
    leftovers = [p.name for p in run.rglob("*") if ".tmp" in p.name]
    assert not leftovers  # no temporary file survives a finished run


def test_a_few_random_kills_then_resume_finish_the_run(tmp_path):
    assert _kill_and_resume(tmp_path, kills=3, seed=7) == 3


@pytest.mark.slow  # 20 kills: several minutes on 2 cores
def test_twenty_random_kills_across_every_stage_then_resume_finish_the_run(tmp_path):
    assert _kill_and_resume(tmp_path, kills=20, seed=2026) == 20
