"""The run directory: everything a run leaves behind, written so that a reader can reproduce it.

    <runs_dir>/<name>-<YYYYmmdd-HHMMSS>/
        recipe.yaml      the resolved recipe (defaults filled in, paths absolute)
        labels.txt       class names, one per line, in output order
        model.keras      the best classifier (no augmentation layers)
        history.json     per-epoch metrics of both phases
        metrics.json     final val top-1/top-5 per phase, skipped files, wall time, images/s
        logs/            TensorBoard
"""

from __future__ import annotations

import json
import os
import time

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
RECIPE_FILE = "recipe.yaml"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"


def create(runs_dir: str, name: str) -> str:
    """A new, empty run directory; never reuses an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(runs_dir, exist_ok=True)
    for attempt in range(1000):
        path = os.path.join(runs_dir, f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{runs_dir}: could not create a new run directory")


def write_text(run_dir: str, filename: str, text: str) -> None:
    """Write via a temporary file and rename, so a file is either whole or absent."""
    path = os.path.join(run_dir, filename)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def write_json(run_dir: str, filename: str, value) -> None:
    write_text(run_dir, filename, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]
