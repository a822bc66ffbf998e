"""`export_model`: a trained model -> `exported_models/<name>/<version>/`, parity-checked.

The version folder holds the SavedModel (TF Serving), labels.txt, the requested TFLite files
(a classifier and an embedder per kind), model.keras (what `enroll` extends), rejection.json and
export_report.json. It is published (renamed into place) only after every artifact ran on
held-out images; an int8 file that loses more than `max_int8_drop` points fails the export, unless
the held-out photos are too few to tell that loss from chance (then it is published with a warning).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import sys

import numpy as np
import tensorflow as tf

from retail_vision import run_directory
from retail_vision.artifacts import KerasPredictor, SavedModelRunner, TFLiteRunner, load_images, load_predictor
from retail_vision.classifier import class_directions, head_kind, head_outputs
from retail_vision.console import log
from retail_vision.data import sources
from retail_vision.errors import ParityError, UserError
from retail_vision.export import parity, tflite, tflite_metadata, versioning
from retail_vision.export.parity import HeldOut
from retail_vision.export.saved_model import write_saved_model
from retail_vision.recipe import ExportConfig, validated_section
from retail_vision.rejection import threshold_keeping

DEFAULTS = ExportConfig()  # the recipe's export defaults, for calls that come without a recipe
# The int8 gate refuses a file when its loss is over the limit with this confidence (one-sided).
# On the 296 grocery val photos a Lite2 int8 file read 2.4 +- 0.9 points below float, where the
# 2,640 photos of the scene folds read 0.15 and the dataset's test photos 0.1 (docs/BENCHMARKS.md):
# a bare threshold refused a good file.
GATE_CONFIDENCE = 0.95


@dataclasses.dataclass
class ExportResult:
    version_dir: str
    report: dict


def export_model(
    model,
    output: str | None = None,
    name: str | None = None,
    tflite_kinds: tuple[str, ...] = (),
    data=None,
    allow_drop: bool = False,
    max_int8_drop: float | None = None,
    calibration_images: int | None = None,
    seed: int | None = None,
    split: dict | None = None,
    report_extra: dict | None = None,
    embedders_from: str | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
    recalibrate: bool = False,
) -> ExportResult:
    """Export a run directory, a `.keras` file or a Keras model in hand (`fit(...).predictor`).

    `data`: held-out images (a folder, a manifest or `Examples`); by default the validation
    files a run recorded in its split.json, and int8 calibrates on its training files.
    `split`: {"train", "validation": Examples} of a model in hand (a run's are read from its folder).
    The version folder keeps the split, so `enroll` and `evaluate` find the photos again.
    `embedders_from`: a version folder whose model has the same backbone weights (`enroll`'s
    source): its embedder files are copied instead of converted again.
    `embeddings`: {held-out file: its embedding through this backbone}, when the caller has them
    (`enroll`); a cosine head's outputs then come from them, with no second backbone pass.
    `recalibrate`: fit the temperature again on the held-out photos (`retail-vision export --data`:
    photos nothing was tuned on); the exported graphs carry it, the report says what it changed.
    `output`, `max_int8_drop`, `calibration_images`, `seed`: by default a run's own recipe's
    (`export:` and `train.seed`), else the recipe defaults.
    """
    unknown = [kind for kind in tflite_kinds if kind not in tflite.KINDS]
    if unknown:
        raise UserError(f"--quantize: unknown {', '.join(unknown)}; choose from {', '.join(tflite.KINDS)}")
    source = _Source.of(model, name, split)
    output = source.settings.output if output is None else output
    max_int8_drop = source.settings.max_int8_drop if max_int8_drop is None else max_int8_drop
    calibration_images = source.settings.calibration_images if calibration_images is None else calibration_images
    seed = source.seed if seed is None else seed
    classifier, labels, resize = source.predictor.model, source.predictor.labels, source.predictor.resize
    size = int(classifier.input_shape[1])
    held_out_examples, calibration_paths = _held_out_and_calibration(source, data, calibration_images, seed)
    images, failures = load_images(held_out_examples.paths, size, resize)
    if failures and len(failures) == len(held_out_examples.paths):
        path, reason = failures[0]
        raise UserError(f"held-out images: none of the {len(failures)} can be read ({path}: {reason}); a run "
                        "names the photos where they were when it trained: pass --data FOLDER_OR_MANIFEST")
    failed = {path for path, _ in failures}
    keep = [i for i, path in enumerate(held_out_examples.paths) if path not in failed]
    held_out = HeldOut(images, np.array([held_out_examples.labels[i] for i in keep]),
                       [held_out_examples.paths[i] for i in keep])
    log(f"held-out images: {len(keep)} ({len(failures)} unreadable skipped)")
    calibrated = None
    if recalibrate and head_kind(classifier):
        classifier, calibrated = _recalibrated(classifier, held_out, len(labels))
        log(f"calibrated again on the held-out photos: temperature x{calibrated.temperature:.2f}, expected "
            f"calibration error {calibrated.ece_before:.3f} -> {calibrated.ece_after:.3f}")
    # Embeddings and the rejection threshold, set again on these photos of known products.
    open_world = _open_world_outputs(classifier, labels, held_out, embeddings)
    rejection = source.predictor.rejection
    if rejection is not None and open_world is not None:
        rejection = rejection.refitted(open_world, class_directions(classifier))

    model_dir = os.path.join(output, source.name)
    with versioning.staging_folder(model_dir) as staging:
        rows = []
        call = tf.function(lambda images: classifier(tf.cast(images, tf.float32), training=False), autograph=False)
        keras_row, reference = parity.measure(
            "keras", source.keras_files, lambda h: call(h.images).numpy(), held_out, None,
            batch_predict=(lambda h: open_world["probabilities"]) if open_world is not None else  # already run
            lambda h: classifier.predict(h.images.astype(np.float32), verbose=0, batch_size=32))
        rows.append(keras_row)

        log("writing SavedModel (TF Serving)")
        write_saved_model(classifier, labels, staging, resize, rejection)
        saved_model_files = [os.path.join(staging, f) for f in ("saved_model.pb", "variables", "assets")]
        runner = SavedModelRunner(staging)
        rows.append(parity.measure("saved_model:serve_images", saved_model_files, lambda h: runner.predict(h.images),
                                   held_out, reference)[0])
        rows.append(parity.measure("saved_model:image_bytes", saved_model_files,
                                   lambda h: runner.predict_bytes(_read(h.paths)), held_out, reference,
                                   batch_predict=lambda h: _in_batches(runner.predict_bytes, _read(h.paths)))[0])
        run_directory.write_text(staging, run_directory.LABELS_FILE, "\n".join(labels) + "\n")
        if rejection is not None:
            rejection.write(staging)
        if open_world is not None:  # what `enroll` extends
            _save_keras(classifier, staging)
            if not source.keras_files:  # a model in hand (enroll's): its size is the file just written
                keras_row.update(files=[run_directory.MODEL_FILE],
                                 size_bytes=os.path.getsize(os.path.join(staging, run_directory.MODEL_FILE)))
        if source.split is not None:
            run_directory.write_split(staging, {part: examples.in_classes(labels)[0]
                                                for part, examples in source.split.items()})

        notes, embedders = [], []
        metadata = tflite_metadata.available()
        if tflite_kinds and not metadata:
            notes.append(f"TFLite files carry no MediaPipe metadata: {tflite_metadata.INSTALL_HINT}")
        for kind in tflite_kinds:
            log(f"converting TFLite {kind}")
            quantization = _quantization(kind, calibration_paths, size, resize)
            path = _write_file(staging, f"{source.name}.{kind}.tflite", tflite.convert(classifier, quantization))
            file_runner = TFLiteRunner(path)
            row, probabilities = parity.measure(f"tflite:{kind}", [path], lambda h: file_runner.predict(h.images),
                                                held_out, reference)
            if metadata:
                # The file's own threshold: its top probabilities on the held-out photos (int8 rounds them).
                threshold = threshold_keeping(probabilities.max(axis=1), rejection.keep_known) if rejection else None
                with open(path, "rb") as handle:
                    flatbuffer = tflite_metadata.add_classifier_metadata(handle.read(), labels, source.name, threshold)
                _write_file(staging, os.path.basename(path), flatbuffer)
                row.update(size_bytes=len(flatbuffer), score_threshold=threshold)
            rows.append(row)
            if open_world is not None:
                path = os.path.join(staging, f"{source.name}.embedder.{kind}.tflite")
                artifact = f"tflite-embedder:{kind}"
                same = _embedder_file(embedders_from, kind)
                if same:  # the backbone is unchanged: the same file, whose embeddings the source measured
                    shutil.copyfile(same, path)
                else:
                    flatbuffer = tflite.convert(classifier, quantization, output="embedding")
                    if metadata:
                        flatbuffer = tflite_metadata.add_embedder_metadata(flatbuffer, source.name)
                    _write_file(staging, os.path.basename(path), flatbuffer)
                measured = _source_row(embedders_from, artifact) if same else None
                embedders.append(measured or parity.measure_embedder(artifact, path, TFLiteRunner(path).predict,
                                                                     held_out, open_world["embedding"]))

        report = {"name": source.name, "model": source.description, "held_out_images": len(keep), "resize": resize,
                  "max_int8_drop_points": max_int8_drop, "artifacts": rows, "embedders": embedders,
                  "rejection": dataclasses.asdict(rejection) if rejection is not None else None, "notes": notes,
                  "calibration": calibrated.as_metrics() if calibrated else None,
                  **(report_extra or {})}
        run_directory.write_json(staging, run_directory.EXPORT_REPORT_FILE, report)
        print(parity.format_table(rows + embedders), file=sys.stderr)
        _check_int8(rows, max_int8_drop, allow_drop)
        version_dir = versioning.publish(staging, model_dir)
    log(f"exported: {version_dir}")
    return ExportResult(version_dir, report)


@dataclasses.dataclass
class _Source:
    """What is exported: the Keras model with its labels, its name, and the run it came from (if any)."""

    predictor: KerasPredictor
    name: str
    description: str  # for the report: the path, or "in-memory model"
    keras_files: list[str]  # the .keras file, for the size column; none for a model in hand
    split: dict | None  # {"train", "validation"[, "test"]: Examples} the run recorded
    settings: ExportConfig = dataclasses.field(default_factory=ExportConfig)  # the run recipe's `export:`
    seed: int = 0  # the run recipe's train.seed: `fit`'s own export and a later one calibrate alike

    @classmethod
    def of(cls, model, name: str | None, split: dict | None = None) -> "_Source":
        predictor = load_predictor(model)
        if not isinstance(predictor, KerasPredictor):
            raise UserError(f"{model}: export takes a run directory, a .keras file or a Keras model; "
                            f"this is a {predictor.kind} artifact, already exported")
        if not isinstance(model, (str, os.PathLike)):
            return cls(predictor, name or "model", "in-memory model", [], split)
        path = os.fspath(model)
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        recipe = run_directory.saved_recipe(folder) or {}
        default_name = recipe.get("name") or os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        keras_file = path if os.path.isfile(path) else os.path.join(path, run_directory.MODEL_FILE)
        return cls(predictor, name or default_name, os.path.abspath(path), [keras_file],
                   run_directory.read_split(folder), _export_section(folder, recipe),
                   (recipe.get("train") or {}).get("seed", 0))


def _export_section(folder: str, recipe: dict) -> ExportConfig:
    """The run recipe's `export:` section, validated (a hand-edited recipe.yaml gets a clear error)."""
    try:
        return validated_section("export", recipe.get("export"))
    except UserError as error:
        raise UserError(f"{os.path.join(folder, run_directory.RECIPE_FILE)}: {error}; fix that section of the "
                        "run's recipe (it sets export's defaults)") from None


def _check_int8(rows: list[dict], max_drop: float, allow_drop: bool) -> None:
    """Refuse an int8 file whose loss against the float model is over `max_drop` beyond sampling noise."""
    float_top1 = rows[0]["top1"]
    margin = statistics.NormalDist().inv_cdf(GATE_CONFIDENCE)
    for row in rows:
        if row["artifact"] != "tflite:int8" or row["drop_points"] <= max_drop:
            continue
        drop, error = row["drop_points"], row["drop_se_points"]
        measured = (f"int8 TFLite top-1 is {drop:.1f} +- {error:.1f} points below the float model "
                    f"({row['top1'] * 100:.1f}% vs {float_top1 * 100:.1f}%), over the {max_drop}-point limit "
                    "(export.max_int8_drop)")
        if drop - margin * error <= max_drop:
            log(f"warning: {measured}, but within what these held-out photos can tell from chance "
                f"({GATE_CONFIDENCE:.0%} one-sided), so it is published; check it on more photos with --data")
        elif allow_drop:
            log(f"warning: {measured}; published because of --allow-drop")
        else:
            raise ParityError(f"{measured}, beyond chance on these held-out photos; nothing was published. "
                              "Use --allow-drop to export anyway.")


def _held_out_and_calibration(source: _Source, data, calibration_images: int, seed: int):
    """Held-out Examples (labels in the model's order) and int8 calibration image paths (training files)."""
    labels = source.predictor.labels
    if isinstance(data, sources.Examples):
        held_out = data
    elif data is not None:
        held_out = sources.load_examples(data, known_classes=labels)
    elif source.split is not None:
        held_out = source.split["validation"]
    else:
        raise UserError("export needs held-out images to check each artifact: pass --data FOLDER_OR_MANIFEST")
    held_out, unknown = held_out.in_classes(labels)
    if any(unknown.values()):
        raise UserError(f"held-out images: class(es) the model does not know: {', '.join(sorted(unknown)[:10])}; "
                        "give photos of the model's classes")
    pool = source.split["train"] if source.split is not None else held_out  # else: the held-out images
    return held_out, across_classes(pool, calibration_images, seed)


def across_classes(examples: sources.Examples, count: int, seed: int) -> list[str]:
    """`count` image paths, seeded, one per class in turn: with more classes than images, as many classes as images.

    int8 ranges then come from every kind of product rather than from the largest classes.
    """
    taken_of_class: dict[int, int] = {}
    turn = []  # each image's turn in its class: 0 for the first one drawn, 1 for the second...
    order = np.random.default_rng(seed).permutation(len(examples.paths))
    for i in order:
        label = examples.labels[i]
        turn.append(taken_of_class.get(label, 0))
        taken_of_class[label] = turn[-1] + 1
    by_turn = order[np.argsort(turn, kind="stable")]
    return [examples.paths[i] for i in by_turn[:count]]


def _quantization(kind: str, calibration_paths: list[str], size: int, resize: str) -> tflite.Quantization:
    if kind != "int8":
        return getattr(tflite.Quantization, f"for_{kind}")()
    images, _ = load_images(calibration_paths, size, resize)
    return tflite.Quantization.for_int8(images)


def _recalibrated(classifier, held_out: HeldOut, classes: int):
    """(a copy of the classifier with its temperature fitted again on the held-out photos, the Calibration);
    the copy leaves a model in the caller's hands as it was."""
    import keras

    from retail_vision.calibration import calibrate

    copy = keras.models.clone_model(classifier)
    copy.set_weights(classifier.get_weights())
    one_hot = np.eye(classes, dtype=np.float32)
    batches = [(held_out.images[i : i + 32].astype(np.float32), one_hot[held_out.labels[i : i + 32]])
               for i in range(0, len(held_out.labels), 32)]
    return copy, calibrate(copy, batches)


def _open_world_outputs(classifier, labels: list[str], held_out: HeldOut,
                        embeddings: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """{probabilities, logits, embedding} of the held-out photos; None for a classifier from before embeddings."""
    if not head_kind(classifier):
        return None
    if head_kind(classifier) == "cosine" and embeddings and all(path in embeddings for path in held_out.paths):
        known = np.stack([embeddings[path] for path in held_out.paths]).astype(np.float32)
        outputs = head_outputs(classifier).predict(known, batch_size=256, verbose=0)
        return {"probabilities": np.asarray(outputs["probabilities"]), "logits": np.asarray(outputs["logits"]),
                "embedding": known}
    return KerasPredictor(classifier, labels).outputs(held_out.images)


def _embedder_file(folder: str | None, kind: str) -> str | None:
    """The `<name>.embedder.<kind>.tflite` file in `folder`, if it has one."""
    if folder is None or not os.path.isdir(folder):
        return None
    found = [name for name in os.listdir(folder) if name.endswith(f".embedder.{kind}.tflite")]
    return os.path.join(folder, found[0]) if len(found) == 1 else None


def _source_row(folder: str, artifact: str) -> dict | None:
    """The embedder row of `folder`'s export report, marked with the version that measured it (`folder`, or
    the one `folder` carried it from); None if it has none."""
    report = run_directory.read_json(folder, run_directory.EXPORT_REPORT_FILE) or {}
    row = next((row for row in report.get("embedders", []) if row["artifact"] == artifact), None)
    return {"measured_in": os.path.abspath(folder), **row} if row else None


def _write_file(folder: str, name: str, content: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(content)
    return path


def _save_keras(classifier, folder: str) -> None:
    """model.keras, without an optimizer: the classifier `enroll` adds classes to."""
    classifier.save(os.path.join(folder, run_directory.MODEL_FILE))


def _read(paths: list[str]) -> list[bytes]:
    contents = []
    for path in paths:
        with open(path, "rb") as handle:
            contents.append(handle.read())
    return contents


def _in_batches(predict, items: list, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])

