"""Load any artifact we write and run it the same way: `load_predictor(model).predict(images)`.

An artifact is a run directory, a `.keras` file, an exported SavedModel version directory or a
`.tflite` file; a model in hand (a `Predictor`, or a `keras.Model` such as `fit(...).model`)
is taken as it is. Every predictor takes RGB images already resized to its square `image_size`
(uint8 or float 0..255, [N, H, W, 3]) and returns class probabilities [N, C] in `labels` order;
`classify` adds each photo's rejection score and whether it is an unknown product, when the
artifact carries a rejection threshold (rejection.json beside it).
This is the layer below `export` and `evaluation`: it loads, it never writes.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from retail_vision import run_directory
from retail_vision.errors import UserError
from retail_vision.rejection import Rejection


@dataclasses.dataclass
class Classified:
    probabilities: np.ndarray  # [N, C]
    scores: np.ndarray | None  # [N] rejection scores; None without a rejection threshold
    unknown: np.ndarray | None  # [N] bool: score below `threshold`
    threshold: float | None = None

    @classmethod
    def empty(cls, classes: int, threshold: float) -> "Classified":
        return cls(np.zeros((0, classes), np.float32), np.zeros(0), np.zeros(0, bool), threshold)


class Predictor:
    """Common face of every artifact kind."""

    kind = "keras"

    def __init__(self, labels: list[str], image_size: int, resize: str = "crop", rejection: Rejection | None = None):
        self.labels = labels
        self.image_size = image_size
        self.resize = resize
        self.rejection = rejection

    def predict(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, images: np.ndarray) -> Classified:
        """Probabilities, and unknown where the top probability is below the rejection's probability threshold.

        That is what a client of the bare probabilities (a .tflite file, MediaPipe) can do; the
        Keras model and the SavedModel compute the rejection's own score instead.
        """
        probabilities = self.predict(images)
        if self.rejection is None:
            return Classified(probabilities, None, None)
        top = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
        threshold = self.rejection.probability_threshold
        return Classified(probabilities, top, top < threshold, threshold)


class KerasPredictor(Predictor):
    kind = "keras"

    def __init__(self, model, labels, resize="crop", rejection: Rejection | None = None):
        import tensorflow as tf

        super().__init__(labels, int(model.input_shape[1]), resize, rejection)
        self.model = model
        # A plain call, not model.predict: under a tf.distribute strategy (a model just trained
        # with one), predict splits and re-joins batches; a direct call computes each image once.
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
        self._outputs = None  # the open-world outputs model, built on first use

    def predict(self, images, batch_size: int = 32):
        images = np.asarray(images, np.float32)
        batches = [self._call(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, self.model.output_shape[-1]), np.float32)

    def outputs(self, images, batch_size: int = 32) -> dict[str, np.ndarray]:
        """{probabilities, logits, embedding} arrays; a classifier from before embeddings is a UserError."""
        import tensorflow as tf

        from retail_vision.classifier import head_kind, open_world_outputs

        if self._outputs is None:
            if head_kind(self.model) is None:
                raise UserError("this model predates embeddings and unknown-product rejection (its head has no "
                                "logits layer); train it again with this version of retail-vision")
            outputs = open_world_outputs(self.model)
            self._outputs = tf.function(lambda x: outputs(x, training=False), reduce_retracing=True, autograph=False)
        return _joined_batches(self._outputs, np.asarray(images, np.float32), batch_size)

    def classify(self, images) -> Classified:
        if self.rejection is None:
            return Classified(self.predict(images), None, None)
        from retail_vision.classifier import class_directions
        from retail_vision.rejection import rejection_scores

        outputs, threshold = self.outputs(images), self.rejection.threshold
        if not outputs:
            return Classified.empty(len(self.labels), threshold)
        scores = np.asarray(rejection_scores(self.rejection.score, outputs["probabilities"], outputs["logits"],
                                             outputs["embedding"], class_directions(self.model)))
        return Classified(outputs["probabilities"], scores, self.rejection.unknown(scores), threshold)


def load_model(path: str):
    """Return (keras.Model, class names) from a run directory or a `.keras` file (Keras safe mode)."""
    import keras

    from retail_vision import classifier  # noqa: F401 - registers the cosine head's layer for loading

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


class SavedModelRunner:
    """Runs an exported SavedModel's `serve_images` (or `serving_default` on encoded bytes)."""

    def __init__(self, directory: str):
        import tensorflow as tf

        self.module = tf.saved_model.load(directory)
        self.serve_images = self.module.signatures["serve_images"]
        self.serve_bytes = self.module.signatures["serving_default"]
        self.image_size = int(self.serve_images.structured_input_signature[1]["images"].shape[1])

    def predict(self, images, batch_size: int = 32):
        import tensorflow as tf

        batches = [
            self.serve_images(images=tf.constant(images[i : i + batch_size], tf.uint8))["probabilities"].numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)

    def predict_bytes(self, encoded: list[bytes]):
        import tensorflow as tf

        return self.serve_bytes(image_bytes=tf.constant(encoded))["probabilities"].numpy()

    def outputs(self, images, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Every output of `serve_images` (probabilities, embedding, score, unknown, labels, scores), as arrays."""
        import tensorflow as tf

        return _joined_batches(lambda batch: self.serve_images(images=tf.constant(batch, tf.uint8)), images, batch_size)


class TFLiteRunner:
    """Runs a `.tflite` file with LiteRT (ai_edge_litert), one image per invoke."""

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=os.cpu_count() or 1)  # LiteRT's default: 1
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        results = []
        for image in np.asarray(images):
            self.interpreter.set_tensor(self.input["index"], image[None].astype(self.input["dtype"]))
            self.interpreter.invoke()
            output = self.interpreter.get_tensor(self.output["index"])[0]
            scale, zero_point = self.output["quantization"]
            if scale:  # a quantized output tensor
                output = (output.astype(np.float32) - zero_point) * scale
            results.append(output.astype(np.float32))
        return np.stack(results) if results else np.zeros((0, self.output["shape"][-1]), np.float32)


class SavedModelPredictor(Predictor):
    kind = "saved_model"

    def __init__(self, directory: str):
        self.runner = SavedModelRunner(directory)
        labels = run_directory.read_labels(os.path.join(directory, "assets", run_directory.LABELS_FILE))
        super().__init__(labels, self.runner.image_size, resize_mode(directory), Rejection.read(directory))

    def predict(self, images):
        return self.runner.predict(np.asarray(images, np.uint8))

    def classify(self, images) -> Classified:
        if self.rejection is None or "unknown" not in self.runner.serve_images.structured_outputs:
            return super().classify(images)
        outputs, threshold = self.runner.outputs(np.asarray(images, np.uint8)), self.rejection.threshold
        if not outputs:
            return Classified.empty(len(self.labels), threshold)
        return Classified(outputs["probabilities"], outputs["score"], outputs["unknown"], threshold)


class TFLitePredictor(Predictor):
    kind = "tflite"

    def __init__(self, path: str):
        self.runner = TFLiteRunner(path)
        labels_file = os.path.join(os.path.dirname(path), run_directory.LABELS_FILE)
        labels = run_directory.read_labels(labels_file) if os.path.isfile(labels_file) else None
        super().__init__(labels or [str(i) for i in range(self.runner.output["shape"][-1])], self.runner.image_size,
                         resize_mode(path), _file_rejection(path))

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


def load_predictor(model) -> Predictor:
    """A predictor for any artifact kind, or for a model in hand; a one-line UserError when `model` is none of them.

    A `keras.Model` without labels gets its output indices as labels ("0", "1", ...); pass
    `fit(...).predictor` to keep the class names.
    """
    if isinstance(model, Predictor):
        return model
    if not isinstance(model, (str, os.PathLike)):
        import keras

        if isinstance(model, keras.Model):
            return KerasPredictor(model, [str(i) for i in range(model.output_shape[-1])])
        raise UserError(f"model: expected a path, a Predictor or a keras.Model, received {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such model file or folder")
    if path.endswith(".tflite"):
        return TFLitePredictor(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return SavedModelPredictor(path)
    model, labels = load_model(path)
    return KerasPredictor(model, labels, resize_mode(path), Rejection.read(_folder(path)))


def _keras_paths(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        return os.path.join(path, run_directory.MODEL_FILE), os.path.join(path, run_directory.LABELS_FILE)
    return path, os.path.join(os.path.dirname(path), run_directory.LABELS_FILE)


def _joined_batches(call, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """`call(batch) -> {name: tensor}` over `images` in batches, each output joined into one array; {} for none."""
    batches = [{k: v.numpy() for k, v in call(images[i : i + batch_size]).items()}
               for i in range(0, len(images), batch_size)]
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]} if batches else {}


def _file_rejection(path: str) -> Rejection | None:
    """The version's rejection, with the probability threshold export set for this very file (int8 rounds)."""
    folder = os.path.dirname(os.path.abspath(path))
    rejection, report = Rejection.read(folder), run_directory.read_json(folder, run_directory.EXPORT_REPORT_FILE)
    if rejection is None or report is None:
        return rejection
    rows = report["artifacts"]
    threshold = next((r.get("score_threshold") for r in rows if r["files"] == [os.path.basename(path)]), None)
    return dataclasses.replace(rejection, probability_threshold=threshold) if threshold is not None else rejection


def _folder(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def resize_mode(path: str) -> str:
    """The training `data.resize`, from the run's recipe or the export report beside the artifact."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    recipe = run_directory.saved_recipe(folder)
    if recipe is not None:
        return recipe.get("data", {}).get("resize", "crop")
    report = run_directory.read_json(folder, run_directory.EXPORT_REPORT_FILE)
    return report.get("resize", "crop") if report is not None else "crop"


def load_images(paths: list[str], size: int, resize: str = "crop") -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and resize image files like the training pipeline; returns (uint8 images, failures).

    A file that cannot be decoded is reported as (path, reason) and left out; the rest load. Files
    are checked and decoded in threads (Pillow and a traced TensorFlow function release the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    from retail_vision.data.scan import inspect_image

    decode = _decoder(size, resize)

    def load(path: str) -> tuple[np.ndarray | None, str | None]:
        reason, orientation = inspect_image(path)
        if reason:
            return None, reason
        return decode(tf.constant(os.fsencode(path)), tf.constant(orientation, tf.int32)).numpy(), None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = list(pool.map(load, paths))
    images = [image for image, _ in loaded if image is not None]
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, [(path, reason) for path, (_, reason) in zip(paths, loaded) if reason]


@functools.lru_cache(maxsize=None)
def _decoder(size: int, resize: str):
    """The training pipeline's decode and resize, traced once per size and mode, rounded to uint8."""
    import tensorflow as tf

    from retail_vision.data.pipeline import load_and_resize

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)])
    def decode(path, orientation):
        image = load_and_resize(path, size, resize, orientation)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)  # tf.round, like np.round: half to even

    return decode
