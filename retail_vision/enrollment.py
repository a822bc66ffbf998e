"""`enroll`: new products learned from a few photos each, with no gradient step, as the next export version.

Each new class's vector is its prototype: the mean L2-normalised embedding of its photos. The
head gets one more class vector per product:
- cosine head (the only one enrollment takes): logit = a * (cos(embedding, prototype) - g * nearest) + b,
  `nearest` being the embedding's highest cosine to a trained class's mean embedding (kept in
  the head at the end of fit). Trained class vectors and prototypes sit differently in feature
  space (a trained vector has cosine ~0.3 with its own photos, a prototype more with every
  photo), so the raw cosine cannot be compared with the trained logits; the gate g lets a new
  class win a photo only when the photo is nearer its prototype than any trained class's photos.
  (a, b, g) is chosen (`choose_logit_map`) to recognise the enrollment photos best, each left out
  of its own prototype (with one photo a class, known classes stand in, each enrolled from one of
  its photos), while the known validation photos lose at most `max_known_drop` points to the
  real prototypes.
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
from scipy.special import logsumexp

from retail_vision import run_directory
from retail_vision.artifacts import KerasPredictor, load_images, load_model, resize_mode
from retail_vision.classifier import HEAD_LAYERS, LOGITS_LAYER, head_kind
from retail_vision.console import log
from retail_vision.data import sources
from retail_vision.errors import DataError, UserError
from retail_vision.export.exporter import DEFAULTS, ExportResult, export_model
from retail_vision.rejection import UNKNOWN_LABEL, Rejection

# Points of top-1 the known classes' validation photos may lose to the new classes (the
# open-world issue's bound).
MAX_KNOWN_DROP = 1.0
# int8 calibration photos of an enrolled version (export's default: 200). The backbone's weights,
# whose activation ranges most of the calibration sets, are the source's; on the grocery benchmark
# 50 keep the int8 file's top-1 within one of 325 photos of 100's (docs/BENCHMARKS.md, "Open world"),
# and each photo costs ~0.2 s of single-threaded calibration of the Lite2 model.
CALIBRATION_IMAGES = 50


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
    the points of top-1 the known classes' validation photos may lose to the new classes (more lets
    the new classes win more photos).
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
    prototypes, enrolled = {}, None
    if new is not None:
        prototypes, enrolled, unreadable = _prototypes(source.predictor, new)
        if unreadable:
            problems.append(f"{photos}: no readable photo in class(es) {', '.join(unreadable)}")
    if problems:
        raise UserError(problems[0]) if len(problems) == 1 else UserError.listing(problems, "enroll")

    # One pass of the source model over the validation photos serves the choice of the logit map
    # and, as the backbone is unchanged, the export's own outputs (with the enrollment photos').
    validation = _validation_photos(source.predictor, source.split) if prototypes else None
    logit_map = _logit_map(source, prototypes, enrolled, validation, set(remove) | set(prototypes), max_known_drop)
    classifier, labels = _with_classes(source.predictor.model, labels, prototypes, remove, logit_map)
    choice = logit_map.choice
    log(f"enrolled {len(prototypes)} class(es), removed {len(remove)}: {len(labels)} classes "
        f"({time.perf_counter() - started:.1f} s); prototype logit {logit_map.scale:.2f} * (cosine - "
        f"{logit_map.gate:.2f} * nearest trained class mean's) {logit_map.bias:+.2f}"
        + (f"; the {choice['photos']} validation photos of known classes lose {choice['known_drop_points']:.1f} "
           f"points, new classes recognised {choice['recall']:.0%} ({choice['recall_from']})" if choice else
           " (no validation photos to choose it on: the trained scale)"))
    predictor = KerasPredictor(classifier, labels, source.predictor.resize, source.predictor.rejection)
    split = _split_with(source.split, new, labels)
    held_out = _held_out(split, new, labels)
    result = export_model(predictor, output=source.output, name=name or source.name,
                          tflite_kinds=source.tflite_kinds, data=held_out, split=split,
                          calibration_images=CALIBRATION_IMAGES,
                          embedders_from=os.fspath(model) if os.path.isdir(model) else None,
                          embeddings={**(validation.embedding_of() if validation else {}),
                                      **(enrolled.embedding_of() if enrolled else {})},
                          report_extra={"enrollment": {
                              "source": os.path.abspath(model), "added": sorted(c for c in prototypes if c not in
                                                                                source.predictor.labels),
                              "replaced": sorted(c for c in prototypes if c in source.predictor.labels),
                              "removed": list(remove), "logit_map": dataclasses.asdict(logit_map),
                              "photos": {c: int(n) for c, n in (new.counts().items() if new else ())}}})
    log(f"enrollment took {time.perf_counter() - started:.1f} s")
    return result


def _prototypes(predictor: KerasPredictor, new: sources.Examples):
    """({class: unit mean embedding of its readable photos}, those photos through the model (Scored, class
    index into the prototypes) or None, [classes with none])."""
    images, failures = load_images(new.paths, predictor.image_size, predictor.resize)
    failed = {path for path, _ in failures}
    kept = np.array([label for path, label in zip(new.paths, new.labels) if path not in failed], np.int64)
    if not len(images):
        return {}, None, list(new.class_names)
    outputs = predictor.outputs(images)
    prototypes = {}
    for index, name in enumerate(new.class_names):
        rows = outputs["embedding"][kept == index]
        if len(rows):
            mean = rows.mean(axis=0)
            prototypes[name] = mean / np.linalg.norm(mean)
    column = {index: j for j, index in enumerate(i for i, name in enumerate(new.class_names) if name in prototypes)}
    readable = tuple(path for path in new.paths if path not in failed)
    enrolled = Scored(outputs["embedding"], outputs["logits"], np.array([column[i] for i in kept]), readable)
    return prototypes, enrolled, [name for name in new.class_names if name not in prototypes]


def _logit_map(source: _Model, prototypes: dict[str, np.ndarray], enrolled: Scored | None,
               validation: Scored | None, dropped: set[str], max_known_drop: float) -> LogitMap:
    """The map chosen on the source's validation photos of the classes it keeps, or the trained scale
    with no bias or gate without them (or with nothing enrolled)."""
    layer = source.predictor.model.get_layer(LOGITS_LAYER)
    labels = source.predictor.labels
    dropped = dropped & set(labels)
    dropped_columns = [i for i, label in enumerate(labels) if label in dropped]
    means = trained_means(layer, dropped_columns)
    trained = layer.gate.numpy() == 0 if layer.with_means else np.ones(len(labels), bool)
    trained_scale = float(np.mean(layer.scale.numpy()[trained]))
    known = None
    if validation is not None:  # the photos of the classes kept, dropped classes' logits at -inf
        known = validation.rows(~np.isin(validation.truth, dropped_columns))
        known = known.without_columns(dropped_columns)
    if known is None or not len(known.truth):
        return LogitMap(trained_scale, 0.0, 0.0, None)
    if means is None:
        log("this model carries no class means (trained before they were kept): enrolled classes are told apart "
            "from the trained ones by the scale and bias alone; train it again for better enrollment")
    enrolled = enrolled.without_columns(dropped_columns)
    return choose_logit_map(known, enrolled, np.stack(list(prototypes.values())), means, trained_scale,
                            max_known_drop)


@dataclasses.dataclass(frozen=True)
class LogitMap:
    """A prototype's logit: scale * (cos(embedding, prototype) - gate * nearest) + bias, where `nearest` is the
    embedding's highest cosine to a trained class's mean; and what choosing it measured."""

    scale: float
    bias: float
    gate: float
    choice: dict | None  # {photos, known_drop_points, recall, recall_from, ...}; None: nothing to choose on


@dataclasses.dataclass(frozen=True)
class Scored:
    """Photos through the source model: unit embeddings [N, D], logits [N, C], a class index [N] and,
    for photos from files, their paths."""

    embeddings: np.ndarray
    logits: np.ndarray
    truth: np.ndarray
    paths: tuple[str, ...] = ()

    def rows(self, keep: np.ndarray) -> "Scored":
        return Scored(self.embeddings[keep], self.logits[keep], self.truth[keep],
                      tuple(np.asarray(self.paths, dtype=object)[keep]) if self.paths else ())

    def without_columns(self, columns: list[int]) -> "Scored":
        """The same photos with those classes' logits at -inf (classes replaced or removed)."""
        logits = self.logits.copy()
        logits[:, columns] = -np.inf
        return dataclasses.replace(self, logits=logits)

    def embedding_of(self) -> dict[str, np.ndarray]:
        return dict(zip(self.paths, self.embeddings))


class MapGrid:
    """The (scale, bias, gate) candidates, broadcast as [A, B, G, photos]."""

    GATES = (0.0, 0.25, 0.5, 0.75, 1.0)  # shares of the nearest trained class mean's cosine taken off

    def __init__(self, trained_scale: float, gated: bool):
        self.scales = trained_scale * np.linspace(0.25, 3.0, 23)[:, None, None, None]
        self.biases = trained_scale * np.linspace(-2.0, 0.5, 51)[None, :, None, None]
        self.gates = np.array(self.GATES if gated else (0.0,))[None, None, :, None]

    def logits(self, cosines: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        return self.scales * (cosines - self.gates * nearest) + self.biases

    def at(self, index: tuple) -> tuple[float, float, float]:
        a, b, g = index
        return float(self.scales[a, 0, 0, 0]), float(self.biases[0, b, 0, 0]), float(self.gates[0, 0, g, 0])


def nearest_mean(embeddings: np.ndarray, means: np.ndarray | None) -> np.ndarray:
    """Each embedding's highest cosine to a class mean (NaN rows of `means`: no mean); 0 without means."""
    if means is None or np.isnan(means).all():
        return np.zeros(len(embeddings))
    return np.nanmax(embeddings @ means.T, axis=1)


def _nll(right: np.ndarray, rivals: np.ndarray) -> np.ndarray:
    """Mean over the last axis of -log softmax of the right logit against the rivals' log-sum-exp: how
    well the candidate's probabilities fit the photos, for ties."""
    return np.mean(np.logaddexp(right, rivals) - right, axis=-1)


def known_drop(grid: MapGrid, known: Scored, prototypes: np.ndarray, means: np.ndarray | None):
    """([A, B, G] points of top-1 the known photos lose to the prototypes under each candidate, [A, B, G]
    their negative log-likelihood, the nearest prototype standing for all)."""
    right = known.logits.argmax(axis=1) == known.truth
    own = known.logits[np.arange(len(known.truth)), known.truth]
    taken = grid.logits((known.embeddings @ prototypes.T).max(axis=1), nearest_mean(known.embeddings, means))
    others = np.where(np.arange(known.logits.shape[1]) == known.truth[:, None], -np.inf, known.logits)
    return (right.mean() - np.mean(right & (own > taken), axis=-1)) * 100, _nll(own, np.logaddexp(
        logsumexp(others, axis=1), taken))


def left_out_recall(grid: MapGrid, enrolled: Scored, means: np.ndarray | None):
    """([A, B, G] share of the enrollment photos recognised by a prototype made without them (leave one
    out), over the classes with 2 or more photos, [A, B, G] their negative log-likelihood, the nearest
    other prototype standing for all); None when no class has 2."""
    counts = np.bincount(enrolled.truth)
    rows = np.flatnonzero(counts[enrolled.truth] >= 2)
    if not len(rows):
        return None
    embeddings, truth = enrolled.embeddings, enrolled.truth
    sums = np.stack([embeddings[truth == c].sum(axis=0) for c in range(len(counts))])
    unit_sums = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    cosines = embeddings[rows] @ unit_sums.T
    left_out = sums[truth[rows]] - embeddings[rows]
    cosines[np.arange(len(rows)), truth[rows]] = np.sum(embeddings[rows] * left_out, axis=1) / np.linalg.norm(
        left_out, axis=1)
    return _recognised(grid, cosines, truth[rows], nearest_mean(embeddings[rows], means), enrolled.logits[rows])


def stand_in_recall(grid: MapGrid, known: Scored, means: np.ndarray | None, new_classes: int, rounds: int = 32,
                    seed: int = 0):
    """(recall, likelihood) as `left_out_recall` gives them, of known photos recognised when their class
    stands in for a new one enrolled from one photo: its trained vector and mean dropped, one of its
    photos (drawn each round) the prototype, its other photos scored. For one photo per new class,
    which leaves nothing to leave out. It overstates the recall (the features were trained on these
    classes). None when fewer than 2 classes have 2 photos."""
    truth = known.truth
    eligible = [c for c in np.unique(truth) if np.sum(truth == c) >= 2]
    if len(eligible) < 2:
        return None
    group_size = int(np.clip(new_classes, 1, len(eligible) // 2))
    rng = np.random.default_rng(seed)
    rounds_measured = []
    for _ in range(rounds):
        group = np.sort(rng.choice(eligible, group_size, replace=False))
        own = np.flatnonzero(np.isin(truth, group))
        stand_in_truth = np.searchsorted(group, truth[own])
        chosen = np.array([rng.choice(np.flatnonzero(stand_in_truth == c)) for c in range(group_size)])
        scored = np.setdiff1d(np.arange(len(own)), chosen)
        embeddings = known.embeddings[own]
        without_group = None
        if means is not None:
            without_group = means.copy()
            without_group[group] = np.nan
        rounds_measured.append(_recognised(
            grid, embeddings[scored] @ embeddings[chosen].T, stand_in_truth[scored],
            nearest_mean(embeddings[scored], without_group), np.delete(known.logits[own[scored]], group, axis=1)))
    return tuple(np.mean(measured, axis=0) for measured in zip(*rounds_measured))


def _recognised(grid: MapGrid, cosines: np.ndarray, truth: np.ndarray, nearest: np.ndarray, trained_logits):
    """([A, B, G] share of photos recognised, [A, B, G] their negative log-likelihood): a photo is recognised
    when its own prototype (column `truth` of its `cosines` to the prototypes) is nearer than every other
    and its logit beats every trained class's; the nearest other prototype stands for all rivals in the
    likelihood."""
    rows = np.arange(len(truth))
    own = cosines[rows, truth]
    others = np.where(np.arange(cosines.shape[1]) == truth[:, None], -np.inf, cosines).max(axis=1)
    logit = grid.logits(own, nearest)
    recognised = (own > others) & (logit > trained_logits.max(axis=1))
    return np.mean(recognised, axis=-1), _nll(logit, np.logaddexp(logsumexp(trained_logits, axis=1),
                                                                   grid.logits(others, nearest)))


def choose_logit_map(known: Scored, enrolled: Scored, prototypes: np.ndarray, means: np.ndarray | None,
                     trained_scale: float, max_known_drop: float) -> LogitMap:
    """The candidate that recognises the new classes best while the known photos lose at most
    `max_known_drop` points (if none keeps that, the one that loses least), the best likelihood of
    the photos breaking ties. The known photos' loss is measured against the real prototypes; the new
    classes' recall by leaving each enrollment photo out of its prototype, or with known classes
    standing in for new ones when every class has one photo."""
    grid = MapGrid(trained_scale, gated=means is not None)
    drop, known_nll = known_drop(grid, known, prototypes, means)
    measured, recall_from = left_out_recall(grid, enrolled, means), "enrollment photos, each left out"
    if measured is None:
        measured, recall_from = stand_in_recall(grid, known, means, len(prototypes)), "known classes standing in"
    recall, new_nll = measured if measured is not None else (np.zeros_like(drop), np.zeros_like(drop))
    # Many candidates tie on the counts; the one whose probabilities fit both kinds of photo best
    # wins: not one at the edge of the region (an int8 model's rounding would flip its decisions),
    # nor one that makes the new classes' probabilities ~1 (unknown products landing on them could
    # not be rejected).
    fit = 1e-6 * (known_nll + new_nll)
    feasible = drop <= max_known_drop
    choice = np.where(feasible, recall - fit, -np.inf) if feasible.any() else -drop + 1e-3 * recall
    index = np.unravel_index(np.argmax(choice), choice.shape)
    scale, bias, gate = grid.at(index)
    return LogitMap(scale, bias, gate, {"photos": int(len(known.truth)), "known_drop_points":
                                        round(float(drop[index]), 2), "recall": round(float(recall[index]), 4),
                                        "recall_from": recall_from})


def _validation_photos(predictor: KerasPredictor, split: dict | None) -> Scored | None:
    """The source's validation photos through the source model; None without any."""
    validation = split["validation"].in_classes(predictor.labels)[0] if split is not None else None
    if validation is None or not len(validation):
        return None
    images, failures = load_images(validation.paths, predictor.image_size, predictor.resize)
    if not len(images):
        return None
    failed = {path for path, _ in failures}
    kept = [i for i, path in enumerate(validation.paths) if path not in failed]
    outputs = predictor.outputs(images)
    return Scored(outputs["embedding"], outputs["logits"], np.asarray(validation.labels)[kept],
                  tuple(validation.paths[i] for i in kept))


def trained_means(layer, dropped_columns: list[int]) -> np.ndarray | None:
    """[C, D] unit mean embeddings by class column: the trained classes (gate 0) the head keeps, NaN
    rows for the others; None if the head has none."""
    if not getattr(layer, "with_means", False):
        return None
    means, gate = layer.class_means.numpy().T.astype(np.float64), layer.gate.numpy()
    keep = (gate == 0) & ~np.isin(np.arange(len(gate)), dropped_columns)
    norms = np.linalg.norm(means, axis=1)
    if not np.all(norms[keep] > 0):
        return None
    return np.where(keep[:, None], means / np.maximum(norms, 1e-12)[:, None], np.nan)


def _with_classes(classifier, labels: list[str], prototypes: dict[str, np.ndarray], remove, logit_map: LogitMap):
    """A classifier sharing `classifier`'s layers up to its head, whose cosine logits layer has the new classes."""
    import keras

    from retail_vision.classifier import CosineLogits

    layer = classifier.get_layer(LOGITS_LAYER)
    kernel, scale, bias = (w.numpy() for w in (layer.kernel, layer.scale, layer.bias))
    means, gate = ((layer.class_means.numpy(), layer.gate.numpy()) if layer.with_means
                   else (np.zeros_like(kernel), np.zeros_like(scale)))
    rows = {label: (kernel[:, i], scale[i], bias[i], means[:, i], gate[i]) for i, label in enumerate(labels)}
    for label, prototype in prototypes.items():
        rows[label] = (prototype, logit_map.scale, logit_map.bias, prototype, logit_map.gate)
    new_labels = [label for label in rows if label not in remove]

    logits = CosineLogits(len(new_labels), layer.initial_scale, with_means=layer.with_means, dtype="float32",
                          name=LOGITS_LAYER)
    features = classifier.get_layer(HEAD_LAYERS[0]).output
    probabilities = keras.layers.Softmax(dtype="float32", name=HEAD_LAYERS[2])(logits(features))
    model = keras.Model(classifier.input, probabilities, name=classifier.name)
    columns = [np.stack([rows[c][k] for c in new_labels], axis=-1) for k in range(5)]
    logits.set_weights(columns if layer.with_means else columns[:3])
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
