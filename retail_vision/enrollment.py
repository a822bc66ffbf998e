"""`enroll`: new products learned from a few photos each, with no gradient step, as the next export version.

Each new class's vector is its prototype: the mean L2-normalised embedding of its photos. The
head gets one more class vector per product:
- cosine head (the only one enrollment takes): logit = a * cos(embedding, prototype) + b.
  Trained class vectors and prototypes sit differently in feature space (a trained vector has
  cosine ~0.3 with its own photos, a prototype more with every photo), so a and b are chosen by
  rehearsing enrollment on the known validation photos (`rehearse`): known classes stand in for
  new ones, and (a, b) recognise them best while the others lose at most `max_known_drop` points.
A softmax (Dense) head is refused: prototypes "imprinted" into it (Qi et al., 2018) took every
known photo on the grocery benchmark, because its vectors act on unnormalised features.
The calibration temperature is already in the head's weights, so the new vectors share it. The
result is exported like `export` does it (SavedModel, the source's TFLite kinds, int8
recalibrated on photos of every class, parity-checked, rejection threshold set again on known
photos), into the next version folder.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from retail_vision import run_directory
from retail_vision.artifacts import KerasPredictor, load_images, load_model, resize_mode
from retail_vision.classifier import HEAD_LAYERS, LOGITS_LAYER, head_kind
from retail_vision.console import log
from retail_vision.data import sources
from retail_vision.errors import DataError, UserError
from retail_vision.export.exporter import DEFAULTS, ExportResult, export_model
from retail_vision.rejection import UNKNOWN_LABEL, Rejection

# Points the known classes may lose in the rehearsal. The rehearsal overstates the loss (its
# stand-ins are classes the features were trained on): on the grocery benchmark 2.5 rehearsed
# points cost the known classes 0.9 real ones (docs/BENCHMARKS.md, "Open world").
MAX_KNOWN_DROP = 2.5


@dataclasses.dataclass
class _Model:
    """What enrollment starts from: a run directory or an exported version folder."""

    predictor: KerasPredictor
    name: str
    output: str  # folder of exported models
    tflite_kinds: tuple[str, ...]
    split: dict | None  # {"train", "validation": Examples}, for the held-out and calibration photos

    @classmethod
    def of(cls, path: str, output: str | None) -> "_Model":
        path = os.fspath(path)
        if path.endswith(".tflite"):
            raise UserError(f"{path}: enroll takes a run directory or an exported version folder (it writes every "
                            "artifact again), not a .tflite file; give the folder that holds it")
        if not os.path.isdir(path):
            raise UserError(f"{path}: no such run directory or exported version folder")
        if not os.path.isfile(os.path.join(path, run_directory.MODEL_FILE)):
            hint = ("it was exported before enrollment existed (no model.keras with embeddings in it); "
                    "export its run again" if os.path.isfile(os.path.join(path, "saved_model.pb"))
                    else "expected a run directory or an exported version folder")
            raise UserError(f"{path}: cannot enroll into this model: {hint}")
        model, labels = load_model(path)
        if head_kind(model) is None:
            raise UserError(f"{path}: cannot enroll into this model: it predates embeddings (its head has no logits "
                            "layer); train it again with this version of retail-vision")
        if head_kind(model) != "cosine":
            # Measured on the grocery photos: prototypes imprinted into the Dense head took every
            # photo of the known classes (known top-1 86.7% -> 0%); docs/BENCHMARKS.md, "Open world".
            raise UserError(f"{path}: cannot enroll into this model: its head is 'softmax', whose class vectors are "
                            "not on the scale of new products' prototypes; train it with model.head: cosine")
        predictor = KerasPredictor(model, labels, resize_mode(path), Rejection.read(path))
        split = run_directory.read_split(path)
        recipe = run_directory.saved_recipe(path)
        if recipe is not None:  # a run directory
            export = recipe.get("export", {})
            return cls(predictor, recipe.get("name") or os.path.basename(path.rstrip("/")),
                       output or export.get("output", DEFAULTS.output), tuple(export.get("tflite", ())), split)
        version = os.path.abspath(path)
        kinds = tuple(name.rsplit(".", 2)[-2] for name in sorted(os.listdir(version))
                      if name.endswith(".tflite") and ".embedder." not in name)
        model_dir = os.path.dirname(version)
        return cls(predictor, os.path.basename(model_dir), output or os.path.dirname(model_dir), kinds, split)


def enroll(model, photos, output: str | None = None, name: str | None = None, replace: bool = False,
           remove: tuple[str, ...] = (), class_names: str | None = None,
           max_known_drop: float = MAX_KNOWN_DROP) -> ExportResult:
    """Add (or with `replace`, re-learn) the classes of PHOTOS and drop `remove`; export the next version.

    MODEL: a run directory or an exported version folder. PHOTOS: a folder of class folders (one per
    product, one or more photos each) or a manifest; None with only `remove`. `max_known_drop`:
    the points of accuracy the known classes may lose in the rehearsal that sets the new classes'
    logit scale (more lets the new classes win more photos).
    """
    started = time.perf_counter()
    source = _Model.of(model, output)
    labels = list(source.predictor.labels)
    new = sources.load_examples(photos, class_names, min_classes=1) if photos else None
    problems = []
    if new is not None:
        existing = [c for c in new.class_names if c in labels and c not in remove]
        if existing and not replace:
            problems.append(f"class(es) the model already knows: {', '.join(existing)}; use --replace to re-learn "
                            "them from these photos, or rename their folders")
        if UNKNOWN_LABEL in new.class_names:
            problems.append(f"{UNKNOWN_LABEL!r} is the label of rejected photos; name the class otherwise")
    missing = [label for label in remove if label not in labels]
    if missing:
        problems.append(f"--remove: not a class of the model: {', '.join(missing)} (it has {len(labels)} classes)")
    if new is None and not remove:
        problems.append("nothing to do: give PHOTOS (a folder of class folders or a manifest) or --remove LABEL")
    prototypes = {}
    if new is not None:
        prototypes, unreadable = _prototypes(source.predictor, new)
        if unreadable:
            problems.append(f"{photos}: no readable photo in class(es) {', '.join(unreadable)}")
    if problems:
        raise UserError(problems[0]) if len(problems) == 1 else UserError.listing(problems, "enroll")

    logit_map = _logit_map(source.predictor, source.split, len(prototypes), max_known_drop)
    classifier, labels = _with_classes(source.predictor.model, labels, prototypes, remove, logit_map)
    rehearsal = logit_map.rehearsal
    log(f"enrolled {len(prototypes)} class(es), removed {len(remove)}: {len(labels)} classes "
        f"({time.perf_counter() - started:.1f} s); prototype logit {logit_map.scale:.2f} * cosine {logit_map.bias:+.2f}"
        + (f", rehearsed on {rehearsal['photos']} validation photos: {rehearsal['stand_ins']} stand-in classes "
           f"recognised {rehearsal['stand_in_recall']:.0%}, the others losing {rehearsal['known_drop_points']:.1f} "
           "points" if rehearsal else " (no validation photos to rehearse on: the trained scale)"))
    predictor = KerasPredictor(classifier, labels, source.predictor.resize, source.predictor.rejection)
    split = _split_with(source.split, new, labels)
    held_out = _held_out(split, new, labels)
    result = export_model(predictor, output=source.output, name=name or source.name,
                          tflite_kinds=source.tflite_kinds, data=held_out, split=split,
                          embedders_from=os.fspath(model) if os.path.isdir(model) else None,
                          report_extra={"enrollment": {
                              "source": os.path.abspath(model), "added": sorted(c for c in prototypes if c not in
                                                                                source.predictor.labels),
                              "replaced": sorted(c for c in prototypes if c in source.predictor.labels),
                              "removed": list(remove), "logit_map": dataclasses.asdict(logit_map),
                              "photos": {c: int(n) for c, n in (new.counts().items() if new else ())}}})
    log(f"enrollment took {time.perf_counter() - started:.1f} s")
    return result


def _prototypes(predictor: KerasPredictor, new: sources.Examples) -> tuple[dict[str, np.ndarray], list[str]]:
    """({class: unit mean embedding of its readable photos}, [classes with none])."""
    images, failures = load_images(new.paths, predictor.image_size, predictor.resize)
    failed = {path for path, _ in failures}
    kept = [label for path, label in zip(new.paths, new.labels) if path not in failed]
    embeddings = predictor.outputs(images)["embedding"] if len(images) else np.zeros((0, 1))
    prototypes = {}
    for index, name in enumerate(new.class_names):
        rows = embeddings[np.asarray(kept) == index] if kept else embeddings[:0]
        if len(rows):
            mean = rows.mean(axis=0)
            prototypes[name] = mean / np.linalg.norm(mean)
    return prototypes, [name for name in new.class_names if name not in prototypes]


@dataclasses.dataclass(frozen=True)
class LogitMap:
    """A prototype's logit: scale * cos(embedding, prototype) + bias, and what rehearsing it measured."""

    scale: float
    bias: float
    rehearsal: dict | None  # {photos, rounds, stand_ins, known_drop_points, stand_in_recall}; None: not rehearsed


def rehearse(embeddings: np.ndarray, logits: np.ndarray, truth: np.ndarray, trained_scale: float, new_classes: int,
             max_known_drop: float, rounds: int = 8, seed: int = 0) -> LogitMap | None:
    """The prototype logit map, rehearsed on known photos (their embeddings, trained logits and classes).

    Each round, `new_classes` known classes (at most half of them) stand in for new products: their
    trained vectors are dropped and their photos' prototypes take their place (a photo's own
    class prototype leaves it out). Of the (scale, bias) grid, the one whose stand-ins are
    recognised best while the other photos lose at most `max_known_drop` points wins; if none
    keeps that, the one that loses least. None when fewer than 2 classes have 2 photos.
    """
    eligible = [c for c in np.unique(truth) if np.sum(truth == c) >= 2]
    if len(eligible) < 2:
        return None
    group_size = int(np.clip(new_classes, 1, len(eligible) // 2))
    scales = trained_scale * np.linspace(0.25, 3.0, 23)[:, None, None]
    biases = trained_scale * np.linspace(-2.0, 0.5, 51)[None, :, None]
    rng = np.random.default_rng(seed)
    drops, recalls = [], []
    for _ in range(rounds):
        group = rng.choice(eligible, group_size, replace=False)
        stand_in = np.isin(truth, group)
        sums = np.stack([embeddings[truth == c].sum(axis=0) for c in group])
        cosines = embeddings @ (sums / np.linalg.norm(sums, axis=1, keepdims=True)).T  # [N, G]
        own = np.flatnonzero(stand_in)
        column_of = {c: j for j, c in enumerate(group)}
        column = np.array([column_of[c] for c in truth[own]])  # each stand-in photo's own prototype
        left_out = sums[column] - embeddings[own]
        cosines[own, column] = np.sum(embeddings[own] * left_out, axis=1) / np.linalg.norm(left_out, axis=1)
        rest = logits.copy()
        rest[:, group] = -np.inf
        known = ~stand_in
        right = rest[known].argmax(axis=1) == truth[known]
        kept = right & (rest[known, truth[known]] > scales * cosines[known].max(axis=1) + biases)
        drops.append((right.mean() - kept.mean(axis=2)) * 100)
        own_cos = cosines[own, column]
        others = cosines[own].copy()
        others[np.arange(len(own)), column] = -np.inf
        recalls.append(np.mean((own_cos > others.max(axis=1)) & (scales * own_cos + biases > rest[own].max(axis=1)),
                              axis=2))
    drop, recall = np.mean(drops, axis=0), np.mean(recalls, axis=0)
    feasible = drop <= max_known_drop
    choice = np.where(feasible, recall, -np.inf) if feasible.any() else -drop + 1e-3 * recall
    a, b = np.unravel_index(np.argmax(choice), choice.shape)
    return LogitMap(float(scales[a, 0, 0]), float(biases[0, b, 0]), {
        "photos": int(len(truth)), "rounds": rounds, "stand_ins": group_size,
        "known_drop_points": round(float(drop[a, b]), 2), "stand_in_recall": round(float(recall[a, b]), 4)})


def _logit_map(predictor: KerasPredictor, split: dict | None, new_classes: int, max_known_drop: float) -> LogitMap:
    """The rehearsed map on the source's known validation photos, or the trained scale with no bias without them."""
    trained_scale = float(np.mean(predictor.model.get_layer(LOGITS_LAYER).scale.numpy()))
    validation = split["validation"].in_classes(predictor.labels)[0] if split is not None else None
    if validation is not None and len(validation):
        images, failures = load_images(validation.paths, predictor.image_size, predictor.resize)
        failed = {path for path, _ in failures}
        truth = np.array([label for path, label in zip(validation.paths, validation.labels) if path not in failed])
        if len(images):
            outputs = predictor.outputs(images)
            rehearsed = rehearse(outputs["embedding"], outputs["logits"], truth, trained_scale, new_classes,
                                 max_known_drop)
            if rehearsed is not None:
                return rehearsed
    return LogitMap(trained_scale, 0.0, None)


def _with_classes(classifier, labels: list[str], prototypes: dict[str, np.ndarray], remove, logit_map: LogitMap):
    """A classifier sharing `classifier`'s layers up to its head, whose cosine logits layer has the new classes."""
    import keras

    from retail_vision.classifier import CosineLogits

    layer = classifier.get_layer(LOGITS_LAYER)
    kernel, scale, bias = layer.get_weights()
    columns = {label: kernel[:, i] for i, label in enumerate(labels)}
    scales, biases = dict(zip(labels, scale)), dict(zip(labels, bias))
    for label, prototype in prototypes.items():
        columns[label], scales[label], biases[label] = prototype, logit_map.scale, logit_map.bias
    new_labels = [label for label in columns if label not in remove]

    logits = CosineLogits(len(new_labels), layer.initial_scale, dtype="float32", name=LOGITS_LAYER)
    features = classifier.get_layer(HEAD_LAYERS[0]).output
    probabilities = keras.layers.Softmax(dtype="float32", name=HEAD_LAYERS[2])(logits(features))
    model = keras.Model(classifier.input, probabilities, name=classifier.name)
    logits.set_weights([np.stack([columns[c] for c in new_labels], axis=1), np.array([scales[c] for c in new_labels]),
                        np.array([biases[c] for c in new_labels])])
    return model, new_labels


def _split_with(split: dict | None, new: sources.Examples | None, labels: list[str]) -> dict | None:
    """The source's split in the new label order (removed classes gone), the enrollment photos added to train."""
    if split is None:
        return None
    kept = {part: examples.in_classes(labels)[0] for part, examples in split.items()}
    if new is not None:
        replaced = set(new.class_names)
        train = kept["train"]
        keep = [i for i, label in enumerate(train.labels) if labels[label] not in replaced]
        added = new.in_classes(labels)[0]
        kept["train"] = sources.Examples([train.paths[i] for i in keep] + added.paths,
                                         [train.labels[i] for i in keep] + added.labels, labels)
    return kept


def _held_out(split: dict | None, new: sources.Examples | None, labels: list[str]) -> sources.Examples:
    """Photos every artifact is checked on: the known validation photos and the enrollment photos."""
    parts = []
    if split is not None:
        parts.append(split["validation"])
    if new is not None:
        parts.append(new.in_classes(labels)[0])
    if not parts or not any(len(p) for p in parts):
        raise DataError("enroll: no photos to check the new version on: the model recorded no validation photos; "
                        "give PHOTOS of the classes to enroll")
    return sources.Examples([p for part in parts for p in part.paths], [l for part in parts for l in part.labels],
                            labels)
