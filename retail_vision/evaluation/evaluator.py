"""`evaluate(model, data)`: the numbers and pictures to look at before shipping a classifier.

The metrics dict (returned, written to metrics.json, printed by `retail-vision evaluate --json`):

    model              the MODEL argument (for a run's own report: its run directory)
    data               the DATA argument (for a run's own report: where its validation images are)
    classes_not_in_model  {class: photos} of DATA's classes the model does not know: scored as unknown
                       products when the model has a rejection threshold (see open_world), else left out
    images             images scored
    skipped_files      [{path, reason}]: unreadable images, left out of every number
    classes            the model's class count
    hierarchy          the fine -> coarse CSV used for coarse_top1, or null
    top1               share of images whose most probable class is the true one
    top5               share whose true class is among the 5 most probable (all, if fewer classes)
    macro_precision    unweighted mean over the classes that have images in DATA
    macro_recall       same; equals balanced_accuracy
    macro_f1           same
    balanced_accuracy  mean recall over the classes that have images in DATA
    log_loss           mean -ln p(true class), p clipped to [1e-15, 1 - 1e-15]
    ece                expected calibration error: 15 equal-width bins of top-1 confidence
    ece_before_temperature  the same before the calibration temperature given as `temperature` (fit's report);
                       null without it
    coarse_top1        share of predictions in the true class's coarse group (Apple for Granny-Smith);
                       null without a hierarchy
    per_class          {class: {precision, recall, f1, support}} for every model class, in label order;
                       null where undefined (recall and f1 of a class DATA has no images of)
    top_confusions     [{true, predicted, count}], most frequent first, at most 20
    open_world         null, or how the model's rejection score tells DATA's known photos from the photos of
                       classes it does not know: {score, known_images, unknown_images, threshold, known_accepted,
                       unknown_rejected, accuracy_at_threshold (known accepted with the right class + unknown
                       rejected, over all), auroc, fpr_at_95_tpr (unknown photos accepted when 95% of known are)}

Ties between equal probabilities go to the lowest class index, as numpy's argmax.
DATA's class names are matched to the model's labels by name, so any folder or manifest can be
scored, in any order, with any subset of the classes (one class too). Photos of classes the model
does not know are left out of the closed-set numbers and listed in `classes_not_in_model`; with
`classes="all"` and a model that can answer "unknown", they are scored as unknowns (open_world).
A Grocery-Store-style `classes.csv` (fine name, fine id, coarse name, ...) in DATA's folder or up
to two folders above it is used as the hierarchy unless one is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from retail_vision import run_directory
from retail_vision.data import sources
from retail_vision.errors import DataError, UserError
from retail_vision.evaluation import metrics as metrics_lib

HIERARCHY_FILE = "classes.csv"
HIERARCHY_SEARCH_DEPTH = 3  # DATA's folder, its parent, its grandparent: grocery_store/val/Fruit -> grocery_store


def evaluate(model, data=None, report_dir: str | None = None, class_names: str | None = None,
             hierarchy: str | None = None, top_k: int = 5, batch_size: int = 32, classes: str = "all",
             temperature: float | None = None) -> dict:
    """Score MODEL on DATA.

    MODEL: any artifact `load_predictor` takes (a path, a `Predictor` such as `fit(...).predictor`,
    a `keras.Model`). DATA: a folder or a manifest, labelled `Examples`, or None for a run
    directory's own validation files (its split.json). Writes a report folder when `report_dir`
    is given; returns the metrics dict described above. `class_names` is the class-name file for
    a manifest whose labels are ids. `classes`: "all" scores photos of classes the model does not
    know as unknown products (when it has a rejection threshold); "known" leaves them out.
    `temperature`: the calibration temperature folded into MODEL (`fit` passes it), so the report
    also shows the reliability diagram and ECE as they were before it.
    """
    from retail_vision.artifacts import load_predictor

    _check_positive(top_k=top_k, batch_size=batch_size)
    if classes not in ("all", "known"):
        raise UserError(f"classes: {classes!r}; choose 'all' (other classes scored as unknown products) or 'known'")
    predictor = load_predictor(model)
    model_name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else f"in-memory {predictor.kind} model"
    if data is None:
        examples, data_name = _run_validation(model), None
    elif isinstance(data, sources.Examples):
        examples, data_name = data, None
    else:
        examples, data_name = sources.load_examples(data, class_names, min_classes=1), os.fspath(data)
    if data_name is None:  # files in hand: name them by the folder they share
        data_name = os.path.commonpath([os.path.dirname(path) for path in examples.paths])
    everything = examples
    examples, not_in_model = matched_examples(examples, predictor.labels, data_name, model_name)
    open_world = bool(not_in_model) and classes == "all" and predictor.rejection is not None
    unknown_paths = [p for p, label in zip(everything.paths, everything.labels)
                     if everything.class_names[label] in not_in_model] if open_world else []
    if open_world:
        print(f"[retail-vision] scoring {len(unknown_paths)} photo(s) of {len(not_in_model)} class(es) the model "
              f"does not know as unknown products: {_preview(sorted(not_in_model))}", file=sys.stderr)
    elif not_in_model:
        print(f"[retail-vision] left out {sum(not_in_model.values())} photo(s) of {len(not_in_model)} class(es) "
              f"the model does not know: {_preview(sorted(not_in_model))}", file=sys.stderr)
    coarse_of, hierarchy_file = _hierarchy(hierarchy, data_name, predictor.labels)
    history = _read_history(model) if isinstance(model, (str, os.PathLike)) else None
    return _score(
        predictor, examples, unknown_paths,
        description={"model": model_name, "data": data_name, "hierarchy": hierarchy_file,
                     "classes_not_in_model": not_in_model}, coarse_of=coarse_of,
        groups=coarse_of or _folder_groups(examples, data_name), history=history,
        report_dir=report_dir, top_k=top_k, batch_size=batch_size, temperature=temperature,
    )


def _run_validation(model) -> sources.Examples:
    """The validation files a run directory recorded, for `evaluate RUN` without DATA."""
    folder = None
    if isinstance(model, (str, os.PathLike)):
        folder = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    split = run_directory.read_split(folder) if folder else None
    if split is None:
        raise UserError(f"{model}: no recorded validation files (split.json of a folder or manifest run); "
                        "give DATA, a folder or manifest of labelled photos")
    return split["validation"]


def _score(predictor, examples, unknown_paths, description, coarse_of, groups, history, report_dir, top_k,
           batch_size, temperature) -> dict:
    labels = predictor.labels
    known = _predict_files(predictor, examples.paths, batch_size, examples.labels, max(top_k, metrics_lib.TOP_K), temperature)
    if not known.kept:
        first = known.skipped[0]
        raise DataError(f"{description['data']}: none of the {len(known.skipped)} images could be read "
                        f"(first: {first['path']}: {first['reason']})")
    paths = [examples.paths[i] for i in known.kept]
    ranked = known.ranked
    results = {**description, "images": len(known.kept), "skipped_files": known.skipped, "classes": len(labels),
               **metrics_lib.summarize(ranked, labels, coarse_of), "open_world": None,
               "ece_before_temperature": None}
    if temperature is not None:
        results["ece_before_temperature"] = metrics_lib.calibration_error(known.confidence_before, ranked.correct)
    open_set_scores = None
    if unknown_paths:
        unknown = _predict_files(predictor, unknown_paths, batch_size)
        results["skipped_files"] += unknown.skipped
        results["open_world"] = {"score": predictor.rejection.score, **metrics_lib.open_set(
            known.scores, unknown.scores, ranked.correct, known.threshold)}
        open_set_scores = (known.scores, unknown.scores, known.threshold)
    if report_dir:
        from retail_vision.evaluation.report import write_report  # matplotlib only when a report is asked for

        write_report(report_dir, results, paths, ranked, labels, top_k, groups, history, open_set_scores,
                     known.confidence_before)
    return results


@dataclasses.dataclass(frozen=True)
class _Predicted:
    kept: list[int]  # indices into the paths of the readable files
    skipped: list[dict]  # [{path, reason}] of the others
    ranked: metrics_lib.Ranked | None  # with true labels: what the metrics read of the probabilities
    scores: np.ndarray | None  # [N] rejection scores, with a model that has a threshold
    threshold: float | None
    confidence_before: np.ndarray | None  # [N] top probability before the calibration temperature, when given


def _predict_files(predictor, paths, batch_size, labels=None, top_k: int = metrics_lib.TOP_K,
                   temperature: float | None = None) -> _Predicted:
    """Load and classify in batches, keeping of each photo what the metrics read, never [N, C] probabilities.

    `labels`: the true class index of each path, for `ranked`; `temperature`: see `_confidence_before`.
    """
    from retail_vision.artifacts import load_images

    kept, skipped, ranked, scores, before, threshold = [], [], [], [], [], None
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        images, failures = load_images(batch, predictor.image_size, predictor.resize)
        failed = {path for path, _ in failures}
        skipped += [{"path": path, "reason": reason} for path, reason in failures]
        readable = [start + i for i, path in enumerate(batch) if path not in failed]
        kept += readable
        if not len(images):
            continue
        classified = predictor.classify(images)
        probs = np.asarray(classified.probabilities, dtype=np.float64)
        if labels is not None:
            ranked.append(metrics_lib.Ranked.of([labels[i] for i in readable], probs, top_k))
        if temperature is not None:
            before.append(_confidence_before(probs, temperature))
        if classified.scores is not None:
            scores.append(np.asarray(classified.scores, np.float64))
            threshold = classified.threshold
    return _Predicted(kept, skipped, metrics_lib.Ranked.joined(ranked) if ranked else None,
                      np.concatenate(scores) if scores else None, threshold,
                      np.concatenate(before) if before else None)


def _confidence_before(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Top probability before a temperature T folded into the model: logits = T * log p up to a constant per
    row, so it is max softmax(T log p) = 1 / sum_j (p_j / p_max) ** T; the top class is the same."""
    clipped = np.clip(probs, metrics_lib.LOG_LOSS_EPS, 1.0)
    return 1.0 / np.sum((clipped / clipped.max(axis=1, keepdims=True)) ** temperature, axis=1)


def matched_examples(examples: sources.Examples, labels: list[str], data: str, model: str):
    """(`examples` of the model's classes, indexing its `labels`; {class the model lacks: photos left out}).

    DATA with none of the model's classes is an error.
    """
    matched, not_in_model = examples.in_classes(labels)
    if len(not_in_model) == len(examples.class_names):
        raise DataError(
            f"{data}: none of its {len(not_in_model)} class(es) is a class of the model: {_preview(list(not_in_model))} "
            f"(model {model} has {len(labels)} classes: {_preview(labels)})"
        )
    return matched, not_in_model


# === Hierarchy: fine class -> coarse group ===

def find_hierarchy(data: str) -> str | None:
    """A `classes.csv` in DATA's folder or up to two folders above it (e.g. grocery_store/ for grocery_store/val)."""
    folder = os.path.abspath(data if os.path.isdir(data) else os.path.dirname(data))
    for _ in range(HIERARCHY_SEARCH_DEPTH):
        candidate = os.path.join(folder, HIERARCHY_FILE)
        if os.path.isfile(candidate):
            return candidate
        folder = os.path.dirname(folder)
    return None


def read_hierarchy(path: str) -> dict[str, str]:
    """Rows `fine name, fine id, coarse name, ...` with an optional header, like Grocery Store's classes.csv."""
    rows = sources.read_class_table(path, "hierarchy file")
    bad = next((n for n, row in enumerate(rows, 1) if len(row) < 3 or not row[2].strip()), None)
    if not rows or bad is not None:
        raise DataError(f"{path}: expected rows 'fine name, fine id, coarse name, ...' "
                        f"(like Grocery Store's classes.csv); row {bad or 1} is not")
    return {row[0].strip(): row[2].strip() for row in rows}


def _hierarchy(explicit: str | None, data: str, labels: list[str]) -> tuple[dict[str, str] | None, str | None]:
    """(fine -> coarse for every model label, the file), or (None, None) without a usable hierarchy.

    An explicit file must cover every model class; an auto-detected one that does not is ignored
    with a note on stderr, since it may belong to a different dataset.
    """
    path = explicit or find_hierarchy(data)
    if path is None:
        return None, None
    try:
        coarse_of = read_hierarchy(path)
        missing = [name for name in labels if name not in coarse_of]
        if missing:
            raise DataError(f"{path}: no coarse class for {len(missing)} model class(es): {_preview(missing)}")
    except DataError as error:
        if explicit:
            raise
        print(f"[retail-vision] not using the hierarchy found next to the data: {error}", file=sys.stderr)
        return None, None
    return {name: coarse_of[name] for name in labels}, path


def _folder_groups(examples: sources.Examples, data: str) -> dict[str, str] | None:
    """Class -> top-level folder under DATA (Fruit, Packages...), to order the confusion matrix."""
    if not os.path.isdir(data):
        return None
    groups = {}
    for path, label in zip(examples.paths, examples.labels):
        relative = os.path.relpath(path, data).replace(os.sep, "/").split("/")
        groups.setdefault(examples.class_names[label], relative[0] if len(relative) > 2 else "")
    return groups


# === Small helpers ===

def _read_history(model: str) -> dict | None:
    """The run's history.json when MODEL is a run directory or a file inside one."""
    folder = model if os.path.isdir(model) else os.path.dirname(model)
    path = os.path.join(folder, run_directory.HISTORY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name}: received {value!r}; expected a whole number >= 1")


def _preview(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
