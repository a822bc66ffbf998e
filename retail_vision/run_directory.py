"""The run directory: everything a run leaves behind, written so that a reader can reproduce it.

    <runs_dir>/<name>-<YYYYmmdd-HHMMSS>/
        recipe.yaml      the resolved recipe (defaults filled in, paths absolute)
        labels.txt       class names, one per line, in output order
        split.json       the exact training and validation files (what export and evaluate
                         use as the run's held-out photos, never a rescan of the folder)
        model.keras      the best classifier (no augmentation layers)
        history.json     per-epoch metrics of both phases
        metrics.json     final val top-1/top-5 per phase, skipped files, wall time, images/s
                         (written last: its presence marks a finished run)
        report/          evaluation of the validation set (report.md, plots, predictions.csv)
        checkpoints/     what `--resume` needs (see checkpointing.py)
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
SPLIT_FILE = "split.json"
REPORT_FOLDER = "report"


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


def write_split(run_dir: str, data) -> None:
    """Record which files trained and which validated (`data`: a TrainingData); TFDS records its split names."""
    if data.train is None:
        split = {"class_names": data.class_names, "tfds_splits": list(data.tfds_splits)}
    else:
        split = {"class_names": data.class_names,
                 "train": {"paths": data.train.paths, "labels": data.train.labels},
                 "validation": {"paths": data.validation.paths, "labels": data.validation.labels}}
    write_json(run_dir, SPLIT_FILE, split)


def read_split(run_dir: str):
    """(train Examples, validation Examples) as the run recorded them; None for a TFDS run or a run without split.json."""
    from retail_vision.data.sources import Examples

    path = os.path.join(run_dir, SPLIT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        split = json.load(handle)
    if "train" not in split:
        return None
    return tuple(Examples(split[part]["paths"], split[part]["labels"], split["class_names"])
                 for part in ("train", "validation"))


def saved_recipe(folder: str) -> dict | None:
    """The resolved recipe a run directory holds, as plain YAML data (no validation: its backbone may be
    registered only in the process that trained it); None where there is none."""
    import yaml

    path = os.path.join(folder, RECIPE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def is_finished(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, METRICS_FILE))


def find_resumable(runs_dir: str, recipe) -> str:
    """The latest run of this recipe in `runs_dir`; its saved recipe must match the one given."""
    import glob

    from retail_vision.errors import UserError
    from retail_vision.recipe import Recipe

    runs = sorted(
        (path for path in glob.glob(os.path.join(runs_dir, f"{glob.escape(recipe.name)}-*"))
         if os.path.isfile(os.path.join(path, RECIPE_FILE))),
        key=os.path.getmtime,
    )
    if not runs:
        raise UserError(f"--resume: no run of {recipe.name!r} in {runs_dir}; start one without --resume")
    latest = runs[-1]
    saved = Recipe.from_yaml(os.path.join(latest, RECIPE_FILE))
    if saved.model_dump() != recipe.model_dump():
        raise UserError(f"--resume: {latest} was started with a different recipe; start a new run without --resume")
    return latest
