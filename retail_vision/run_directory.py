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
        report-test/     evaluation of data.test, scored once at the end (when the recipe has one)
        checkpoints/     what `--resume` needs (see training/checkpointing.py)
        logs/            TensorBoard
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import tempfile
import time

import yaml

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
RECIPE_FILE = "recipe.yaml"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.json"
EXPORT_REPORT_FILE = "export_report.json"  # an export version's parity table and what it measured
REPORT_FOLDER = "report"
TEST_REPORT_FOLDER = "report-test"


def create(runs_dir: str, name: str, files: dict[str, str]) -> str:
    """A new run directory holding `files` ({filename: text}); never reuses an existing one.

    It is filled under a hidden name and renamed when complete, so a run directory that
    `--resume` can find always has its recipe, labels and split.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(runs_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-staging-", dir=runs_dir)
    for filename, text in files.items():
        write_text(staging, filename, text)
    for attempt in range(1000):
        path = os.path.join(runs_dir, f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            os.mkdir(path)  # claims the name; the rename below then replaces this empty folder
        except FileExistsError:
            continue
        os.replace(staging, path)
        return path
    raise RuntimeError(f"{runs_dir}: could not create a new run directory")


@contextlib.contextmanager
def replaced(path: str):
    """A temporary name beside `path` to write to (by hand or by a library); renamed to `path` when the block succeeds.

    A kill mid-write leaves the previous `path` (or none), never half a file.
    """
    temporary = f"{path}.tmp"
    yield temporary
    os.replace(temporary, path)


def write_text(run_dir: str, filename: str, text: str) -> None:
    """Write via a temporary file and rename, so a file is either whole or absent."""
    path = os.path.join(run_dir, filename)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)


def write_json(run_dir: str, filename: str, value) -> None:
    write_text(run_dir, filename, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(folder: str, filename: str):
    """The JSON document `filename` in `folder`; None if there is no such file."""
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def split_json(data) -> str:
    """Which files trained and which validated (`data`: a TrainingData), for split.json; TFDS: its split names."""
    if data.train is None:
        split = {"class_names": data.class_names, "tfds_splits": list(data.tfds_splits)}
    else:
        split = _split_document(data.class_names, {"train": data.train, "validation": data.validation,
                                                    "test": data.test})
    return json.dumps(split, indent=1) + "\n"


def write_split(folder: str, parts: dict) -> None:
    """split.json of {"train", "validation"[, "test"]: Examples} sharing their class names (an export version's)."""
    class_names = next(iter(parts.values())).class_names
    write_text(folder, SPLIT_FILE, json.dumps(_split_document(class_names, parts), indent=1) + "\n")


def _split_document(class_names: list[str], parts: dict) -> dict:
    return {"class_names": list(class_names), **{part: {"paths": examples.paths, "labels": examples.labels}
                                                 for part, examples in parts.items() if examples is not None}}


def read_split(run_dir: str) -> dict | None:
    """{"train", "validation"[, "test"]: Examples} as the run recorded them; None for a TFDS run or a run without split.json."""
    from retail_vision.data.sources import Examples

    path = os.path.join(run_dir, SPLIT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        split = json.load(handle)
    if "train" not in split:
        return None
    return {part: Examples(split[part]["paths"], split[part]["labels"], split["class_names"])
            for part in ("train", "validation", "test") if part in split}


def saved_recipe(folder: str) -> dict | None:
    """The resolved recipe a run directory holds, as plain YAML data (no validation: its backbone may be
    registered only in the process that trained it); None where there is none."""
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


def find_resumable(runs_dir: str, recipe, run: str | None = None) -> str:
    """The run to continue: `run` when given, else the latest unfinished run of this recipe in
    `runs_dir` (the latest finished one when none is unfinished). Its saved recipe must match
    `recipe`; when it does not, the error names each differing field and the command that continues it.
    """
    from retail_vision.errors import UserError
    from retail_vision.recipe import Recipe

    if run is not None:
        if not os.path.isfile(os.path.join(run, RECIPE_FILE)):
            raise UserError(f"--resume {run}: not a run directory (it has no {RECIPE_FILE}); "
                            f"give a folder that fit created, such as {os.path.join(runs_dir, recipe.name + '-*')}")
        chosen = run
    else:
        runs = sorted((path for path in glob.glob(os.path.join(runs_dir, f"{glob.escape(recipe.name)}-*"))
                       if os.path.isfile(os.path.join(path, RECIPE_FILE)) and _started(path, recipe.name)),
                      key=lambda path: _started(path, recipe.name))
        if not runs:
            raise UserError(f"--resume: no run of {recipe.name!r} in {runs_dir}; start one without --resume")
        unfinished = [path for path in runs if not is_finished(path)]
        chosen = (unfinished or runs)[-1]
    saved = Recipe.from_yaml(os.path.join(chosen, RECIPE_FILE))
    differences = _differences(saved.model_dump(), recipe.model_dump())
    if differences:
        def inline(value) -> str:
            return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()

        changed = "; ".join(f"{key} was {inline(old)}, now {inline(new)}" for key, old, new in differences)
        sets = " ".join(f"--set {shlex.quote(f'{key}={inline(old)}')}" for key, old, _ in differences)
        command = f"retail-vision fit {shlex.quote(recipe.source or 'RECIPE')} {sets} --resume {shlex.quote(chosen)}"
        raise UserError(f"--resume: {chosen} was started with a different recipe: {changed}; "
                        f"to continue it, run: {command}")
    return chosen


def _started(run_dir: str, name: str) -> tuple[str, int] | None:
    """When `create` named the run: (its time stamp, its same-second counter); None for another folder."""
    match = re.fullmatch(rf"{re.escape(name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?", os.path.basename(run_dir))
    return (match[1], int(match[2] or 0)) if match else None


def _differences(saved: dict, given: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, saved value, given value) for every field that differs, depth first."""
    found = []
    for key in saved.keys() | given.keys():
        old, new = saved.get(key), given.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append((f"{prefix}{key}", old, new))
    return sorted(found)
