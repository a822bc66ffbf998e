"""`enroll`: new products learned from a few photos each, with no gradient step, as the next export version.

Each new class's vector is its prototype: the mean L2-normalised embedding of its photos. The
head gets one more class vector per product:
- cosine head (the only one enrollment takes): logit = a * cos(embedding, prototype) + b.
  Trained class vectors and prototypes sit differently in feature space (a trained vector has cosine ~0.3 with its own photos, a
  prototype more with every photo), so a and b are chosen by rehearsing enrollment on the
  known validation photos: each known class in turn stands in for a new one, represented by the
  prototype of its other photos, and (a, b) maximise the mean of its photos' recall and the
  other photos' accuracy.
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
           remove: tuple[str, ...] = (), class_names: str | None = None) -> ExportResult:
    """Add (or with `replace`, re-learn) the classes of PHOTOS and drop `remove`; export the next version.

    MODEL: a run directory or an exported version folder. PHOTOS: a folder of class folders (one per
    product, one or more photos each) or a manifest; None with only `remove`.
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
        raise (UserError(problems[0]) if len(problems) == 1 else
               UserError("\n".join([f"enroll: {len(problems)} problems:"] + [f"  {p}" for p in problems])))

    logit_map = _prototype_logit_map(source.predictor, source.split)
    classifier, labels = _with_classes(source.predictor.model, labels, prototypes, remove, logit_map)
    log(f"enrolled {len(prototypes)} class(es), removed {len(remove)}: {len(labels)} classes "
        f"({time.perf_counter() - started:.1f} s); prototype logits {logit_map[0]:.2f} * cosine {logit_map[1]:+.2f}")
    predictor = KerasPredictor(classifier, labels, source.predictor.resize, source.predictor.rejection)
    split = _split_with(source.split, new, labels, remove)
    held_out = _held_out(split, new, labels)
    result = export_model(predictor, output=source.output, name=name or source.name,
                          tflite_kinds=source.tflite_kinds, data=held_out, split=split,
                          report_extra={"enrollment": {
                              "source": os.path.abspath(model), "added": sorted(c for c in prototypes if c not in
                                                                                source.predictor.labels),
                              "replaced": sorted(c for c in prototypes if c in source.predictor.labels),
                              "removed": list(remove),
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


def _prototype_logit_map(predictor: KerasPredictor, split: dict | None) -> tuple[float, float]:
    """(a, b) of a prototype's logit a * cos + b, rehearsed on the known validation photos.

    Without at least two classes of two readable validation photos: the trained scale, no bias.
    """
    layer = predictor.model.get_layer(LOGITS_LAYER)
    trained_scale = float(np.mean(layer.scale.numpy()))
    validation = split["validation"].in_classes(predictor.labels)[0] if split is not None else None
    images = load_images(validation.paths, predictor.image_size, predictor.resize) if validation else None
    if images is None or len(images[1]):
        return trained_scale, 0.0  # no usable validation photos: the trained scale as it is
    outputs, truth = predictor.outputs(images[0]), np.asarray(validation.labels)
    embeddings, logits = outputs["embedding"], outputs["logits"]
    right = logits.argmax(axis=1) == truth
    scales = trained_scale * np.linspace(0.25, 2.0, 15)[:, None, None]
    biases = trained_scale * np.linspace(-1.0, 0.25, 26)[None, :, None]
    scores = []
    for c in np.unique(truth):
        own = truth == c
        if own.sum() < 2:
            continue
        total = embeddings[own].sum(axis=0)
        left_out = total[None, :] - embeddings[own]  # each own photo's prototype leaves it out
        own_cos = np.sum(embeddings[own] * left_out, axis=1) / np.linalg.norm(left_out, axis=1)
        rival = np.max(np.delete(logits[own], c, axis=1), axis=1)
        recall = np.mean(scales * own_cos + biases > rival, axis=2)
        prototype = total / np.linalg.norm(total)
        other_cos = embeddings[~own] @ prototype
        kept = np.mean(right[~own] & (logits[~own, truth[~own]] > scales * other_cos + biases), axis=2)
        scores.append((recall + kept) / 2)
    if len(scores) < 2:
        return trained_scale, 0.0
    best = np.unravel_index(np.argmax(np.mean(scores, axis=0)), scores[0].shape)
    return float(scales[best[0], 0, 0]), float(biases[0, best[1], 0])


def _with_classes(classifier, labels: list[str], prototypes: dict[str, np.ndarray], remove,
                  logit_map: tuple[float, float]):
    """A classifier sharing `classifier`'s layers up to its head, whose cosine logits layer has the new classes."""
    import keras

    from retail_vision.classifier import CosineLogits

    layer = classifier.get_layer(LOGITS_LAYER)
    kernel, scale, bias = layer.get_weights()
    columns = {label: kernel[:, i] for i, label in enumerate(labels)}
    scales, biases = dict(zip(labels, scale)), dict(zip(labels, bias))
    for label, prototype in prototypes.items():
        columns[label], scales[label], biases[label] = prototype, *logit_map
    new_labels = [label for label in columns if label not in remove]

    logits = CosineLogits(len(new_labels), layer.initial_scale, dtype="float32", name=LOGITS_LAYER)
    features = classifier.get_layer(HEAD_LAYERS[0]).output
    probabilities = keras.layers.Softmax(dtype="float32", name=HEAD_LAYERS[2])(logits(features))
    model = keras.Model(classifier.input, probabilities, name=classifier.name)
    logits.set_weights([np.stack([columns[c] for c in new_labels], axis=1), np.array([scales[c] for c in new_labels]),
                        np.array([biases[c] for c in new_labels])])
    return model, new_labels


def _split_with(split: dict | None, new: sources.Examples | None, labels: list[str], remove) -> dict | None:
    """The source's split in the new label order, the enrollment photos added to train."""
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
