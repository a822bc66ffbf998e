"""`export_model`: a trained model -> `exported_models/<name>/<version>/`, parity-checked.

The version folder holds the SavedModel (TF Serving), labels.txt, the requested TFLite files
and export_report.json. It is published (renamed into place) only after every artifact ran on
held-out images; an int8 file that loses more than `max_int8_drop` points fails the export.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf

from retail_vision import run_directory
from retail_vision.artifacts import load_images, load_model
from retail_vision.errors import ParityError, UserError
from retail_vision.export import parity, tflite, tflite_metadata, versioning
from retail_vision.export.parity import HeldOut
from retail_vision.export.saved_model import SavedModelRunner, write_saved_model

REPORT_FILE = "export_report.json"


@dataclasses.dataclass
class ExportResult:
    version_dir: str
    report: dict


def export_model(
    model: str,
    output: str = "exported_models",
    name: str | None = None,
    tflite_kinds: tuple[str, ...] = (),
    data: str | None = None,
    allow_drop: bool = False,
    max_int8_drop: float = 1.0,
    calibration_images: int = 200,
    seed: int = 0,
) -> ExportResult:
    """Export a run directory or `.keras` file. `data`: held-out images (default: the run's validation)."""
    unknown = [kind for kind in tflite_kinds if kind not in tflite.KINDS]
    if unknown:
        raise UserError(f"--quantize: unknown {', '.join(unknown)}; choose from {', '.join(tflite.KINDS)}")
    classifier, labels = load_model(model)
    recipe = _recipe_of(model)
    name = name or (recipe.name if recipe else os.path.splitext(os.path.basename(model.rstrip("/")))[0])
    resize = recipe.data.resize if recipe else "crop"
    size = int(classifier.input_shape[1])
    held_out_examples, calibration_paths = _held_out_and_calibration(recipe, data, labels, calibration_images, seed)
    images, failures = load_images(held_out_examples.paths, size, resize)
    failed = {path for path, _ in failures}
    keep = [i for i, path in enumerate(held_out_examples.paths) if path not in failed]
    held_out = HeldOut(images, np.array([held_out_examples.labels[i] for i in keep]),
                       [held_out_examples.paths[i] for i in keep])
    _log(f"held-out images: {len(keep)} ({len(failures)} unreadable skipped)")

    model_dir = os.path.join(output, name)
    with versioning.staging_folder(model_dir) as staging:
        rows = []
        keras_file = model if os.path.isfile(model) else os.path.join(model, run_directory.MODEL_FILE)
        call = tf.function(lambda images: classifier(tf.cast(images, tf.float32), training=False))
        keras_row, reference = parity.measure(
            "keras", [keras_file], lambda h: call(h.images).numpy(), held_out, None,
            batch_predict=lambda h: classifier.predict(h.images.astype(np.float32), verbose=0, batch_size=32))
        rows.append(keras_row)

        _log("writing SavedModel (TF Serving)")
        write_saved_model(classifier, labels, staging, resize)
        saved_model_files = [os.path.join(staging, f) for f in ("saved_model.pb", "variables", "assets")]
        runner = SavedModelRunner(staging)
        rows.append(parity.measure("saved_model:serve_images", saved_model_files, lambda h: runner.predict(h.images),
                                   held_out, reference)[0])
        rows.append(parity.measure("saved_model:image_bytes", saved_model_files,
                                   lambda h: runner.predict_bytes(_read(h.paths)), held_out, reference,
                                   batch_predict=lambda h: _in_batches(runner.predict_bytes, _read(h.paths)))[0])
        run_directory.write_text(staging, run_directory.LABELS_FILE, "\n".join(labels) + "\n")

        notes = []
        for kind in tflite_kinds:
            _log(f"converting TFLite {kind}")
            quantization = _quantization(kind, calibration_paths, size, resize)
            flatbuffer = tflite.convert(classifier, quantization)
            if tflite_metadata.available():
                flatbuffer = tflite_metadata.add_metadata(flatbuffer, labels, name)
            elif not notes:
                notes.append(f"TFLite files carry no MediaPipe metadata: {tflite_metadata.INSTALL_HINT}")
            path = os.path.join(staging, f"{name}.{kind}.tflite")
            with open(path, "wb") as handle:
                handle.write(flatbuffer)
            file_runner = tflite.TFLiteRunner(path)
            rows.append(parity.measure(f"tflite:{kind}", [path], lambda h: file_runner.predict(h.images),
                                       held_out, reference)[0])

        report = {"name": name, "model": os.path.abspath(model), "held_out_images": len(keep), "resize": resize,
                  "max_int8_drop_points": max_int8_drop, "artifacts": rows, "notes": notes}
        run_directory.write_json(staging, REPORT_FILE, report)
        print(parity.format_table(rows), file=sys.stderr)
        _check_int8(rows, max_int8_drop, allow_drop)
        version_dir = versioning.publish(staging, model_dir)
    _log(f"exported: {version_dir}")
    return ExportResult(version_dir, report)


def _check_int8(rows: list[dict], max_drop: float, allow_drop: bool) -> None:
    float_top1 = rows[0]["top1"]
    for row in rows:
        drop = (float_top1 - row["top1"]) * 100
        if row["artifact"] == "tflite:int8" and drop > max_drop and not allow_drop:
            raise ParityError(
                f"int8 TFLite top-1 is {drop:.1f} points below the float model "
                f"({row['top1'] * 100:.1f}% vs {float_top1 * 100:.1f}%), over the {max_drop} limit "
                "(export.max_int8_drop); nothing was published. Use --allow-drop to export anyway."
            )


def _recipe_of(model: str):
    from retail_vision.recipe import Recipe

    folder = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    recipe_file = os.path.join(folder, run_directory.RECIPE_FILE)
    return Recipe.from_yaml(recipe_file) if os.path.isfile(recipe_file) else None


def _held_out_and_calibration(recipe, data, labels, calibration_images, seed):
    """Held-out Examples (labels in the model's order) and calibration image paths (train images)."""
    from retail_vision.data import sources
    from retail_vision.data.training_data import resolve_training_data

    train_paths: list[str] = []
    if recipe is not None and not recipe.data.source.startswith("tfds:"):
        try:
            resolved = resolve_training_data(recipe.data, recipe.train.seed)
            train_paths = resolved.train.paths
            held_out = resolved.validation
        except UserError:
            if data is None:
                raise
            held_out = None
    else:
        held_out = None
    if data is not None:
        held_out = sources.load_examples(data, known_classes=labels)
    if held_out is None:
        raise UserError("export needs held-out images to check each artifact: pass --data FOLDER_OR_MANIFEST")
    held_out = sources.Examples(held_out.paths, held_out.labels, labels)
    pool = train_paths or held_out.paths  # without training data, calibrate on the held-out images
    rng = np.random.default_rng(seed)
    calibration = [pool[i] for i in rng.permutation(len(pool))[:calibration_images]]
    return held_out, calibration


def _quantization(kind: str, calibration_paths: list[str], size: int, resize: str) -> tflite.Quantization:
    if kind != "int8":
        return getattr(tflite.Quantization, f"for_{kind}")()
    images, _ = load_images(calibration_paths, size, resize)
    return tflite.Quantization.for_int8(images)


def _read(paths: list[str]) -> list[bytes]:
    contents = []
    for path in paths:
        with open(path, "rb") as handle:
            contents.append(handle.read())
    return contents


def _in_batches(predict, items: list, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])


def _log(message: str) -> None:
    print(f"[retail-vision] {message}", file=sys.stderr, flush=True)
