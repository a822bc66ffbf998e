"""Load any artifact we write and run it the same way: `load_predictor(path).predict(images)`.

An artifact is a run directory, a `.keras` file, an exported SavedModel version directory or a
`.tflite` file. Every predictor takes RGB images already resized to its square `image_size`
(uint8 or float 0..255, [N, H, W, 3]) and returns class probabilities [N, C] in `labels` order.
"""

from __future__ import annotations

import os

import numpy as np

from retail_vision import run_directory
from retail_vision.errors import UserError


class Predictor:
    """Common face of every artifact kind."""

    kind = "keras"

    def __init__(self, labels: list[str], image_size: int, resize: str = "crop"):
        self.labels = labels
        self.image_size = image_size
        self.resize = resize

    def predict(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class KerasPredictor(Predictor):
    kind = "keras"

    def __init__(self, model, labels, resize="crop"):
        import tensorflow as tf

        super().__init__(labels, int(model.input_shape[1]), resize)
        self.model = model
        # A plain call, not model.predict: under a tf.distribute strategy (a model just trained
        # with one), predict splits and re-joins batches; a direct call computes each image once.
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, images, batch_size: int = 32):
        images = np.asarray(images, np.float32)
        batches = [self._call(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, self.model.output_shape[-1]), np.float32)


def load_model(path: str):
    """Return (keras.Model, class names) from a run directory or a `.keras` file (Keras safe mode)."""
    import keras

    model_file, labels_file = _keras_paths(path)
    if not os.path.isfile(model_file):
        raise UserError(
            f"{path}: no model found (expected a run directory, a .keras file, an exported version "
            "folder with saved_model.pb, or a .tflite file)"
        )
    try:
        model = keras.saving.load_model(model_file, safe_mode=True)
    except Exception as error:
        raise UserError(f"{model_file}: cannot load this Keras file ({str(error).splitlines()[0][:120]})") from None
    if os.path.isfile(labels_file):
        labels = run_directory.read_labels(labels_file)
    else:
        labels = [str(i) for i in range(model.output_shape[-1])]
    return model, labels


class SavedModelPredictor(Predictor):
    kind = "saved_model"

    def __init__(self, directory: str):
        from retail_vision.export.saved_model import SavedModelRunner

        self.runner = SavedModelRunner(directory)
        labels = run_directory.read_labels(os.path.join(directory, "assets", run_directory.LABELS_FILE))
        super().__init__(labels, self.runner.image_size, _resize_mode(directory))

    def predict(self, images):
        return self.runner.predict(np.asarray(images, np.uint8))


class TFLitePredictor(Predictor):
    kind = "tflite"

    def __init__(self, path: str):
        from retail_vision.export.tflite import TFLiteRunner

        self.runner = TFLiteRunner(path)
        labels_file = os.path.join(os.path.dirname(path), run_directory.LABELS_FILE)
        labels = run_directory.read_labels(labels_file) if os.path.isfile(labels_file) else None
        super().__init__(labels or [str(i) for i in range(self.runner.output["shape"][-1])], self.runner.image_size,
                         _resize_mode(path))

    def predict(self, images):
        return self.runner.predict(np.clip(np.round(images), 0, 255).astype(np.uint8))


class ImageNetPredictor(KerasPredictor):
    """A pretrained backbone with its original 1000-class ImageNet head: proof that the weights work."""

    kind = "imagenet"

    def __init__(self, backbone: str):
        import importlib.resources

        import keras

        from retail_vision import backbones

        spec = backbones.get(backbone)
        if spec.build_imagenet_classifier is None:
            raise UserError(f"{backbone}: no offline ImageNet head; --imagenet works with efficientnet_lite0/1/2")
        logits = spec.build_imagenet_classifier()
        model = keras.Model(logits.input, keras.layers.Softmax(dtype="float32")(logits.output))
        labels = (importlib.resources.files("retail_vision") / "resources" / "imagenet_labels.txt").read_text()
        super().__init__(model, labels.splitlines(), "crop")


def load_predictor(path: str) -> Predictor:
    """A predictor for any artifact kind; a one-line UserError when `path` is none of them."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such model file or folder")
    if path.endswith(".tflite"):
        return TFLitePredictor(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return SavedModelPredictor(path)
    model, labels = load_model(path)
    return KerasPredictor(model, labels, _resize_mode(path))


def _keras_paths(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        return os.path.join(path, run_directory.MODEL_FILE), os.path.join(path, run_directory.LABELS_FILE)
    return path, os.path.join(os.path.dirname(path), run_directory.LABELS_FILE)


def _resize_mode(path: str) -> str:
    """The training `data.resize`, from the run's recipe or the export report beside the artifact."""
    import json

    import yaml

    folder = path if os.path.isdir(path) else os.path.dirname(path)
    recipe_file = os.path.join(folder, run_directory.RECIPE_FILE)
    report_file = os.path.join(folder, "export_report.json")
    if os.path.isfile(recipe_file):
        with open(recipe_file, encoding="utf-8") as handle:
            return (yaml.safe_load(handle) or {}).get("data", {}).get("resize", "crop")
    if os.path.isfile(report_file):
        with open(report_file, encoding="utf-8") as handle:
            return json.load(handle).get("resize", "crop")
    return "crop"


def load_images(paths: list[str], size: int, resize: str = "crop") -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and resize image files like the training pipeline; returns (uint8 images, failures).

    A file that cannot be decoded is reported as (path, reason) and left out; the rest load.
    """
    import tensorflow as tf

    from retail_vision.data.pipeline import load_and_resize
    from retail_vision.data.scan import inspect_image

    images, failures = [], []
    for path in paths:
        reason, orientation = inspect_image(path)
        if reason:
            failures.append((path, reason))
            continue
        image = load_and_resize(tf.constant(os.fsencode(path)), size, resize, orientation)
        images.append(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, failures
