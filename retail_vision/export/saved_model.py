"""SavedModel for TF Serving, written through Keras 3's `ExportArchive`, with two signatures.

- `serving_default`: `image_bytes` (tf.string [None], encoded JPEG/PNG/BMP/GIF), decoded,
  resized and normalised inside the graph, so a REST client sends `{"instances": [{"b64": ...}]}`.
- `serve_images`: `images` (uint8 RGB [None, H, W, 3]), already resized.
Both return `probabilities` [None, C] in labels.txt order, top-k `labels` (tf.string) and `scores`.
"""

from __future__ import annotations

import os

import tensorflow as tf

from retail_vision.data.pipeline import decode_image, resize_image


def write_saved_model(classifier, labels: list[str], directory: str, resize: str = "crop", top_k: int = 5) -> None:
    import keras

    size = int(classifier.input_shape[1])
    k = min(top_k, len(labels))
    label_table = tf.constant(labels)

    def outputs(images):
        probabilities = classifier(tf.cast(images, tf.float32), training=False)
        scores, indices = tf.math.top_k(probabilities, k=k)
        return {"probabilities": probabilities, "labels": tf.gather(label_table, indices), "scores": scores}

    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda encoded: resize_image(decode_image(encoded), size, resize),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return outputs(images)

    archive = keras.export.ExportArchive()
    track_variables_once(archive, classifier)
    archive.add_endpoint(
        "serving_default", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        "serve_images", outputs, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")]
    )
    archive.write_out(directory, verbose=False)
    os.makedirs(os.path.join(directory, "assets"), exist_ok=True)
    with open(os.path.join(directory, "assets", "labels.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(labels) + "\n")


def track_variables_once(archive, model) -> None:
    """`archive.track(model)`, tracking the tf.Variables rather than their Keras wrappers.

    Keras 3.15 saves every weight twice otherwise, once per wrapper and once as the variable the
    endpoints capture: a SavedModel twice the size, and twice the memory in TF Serving
    (keras-team/keras#23553). With the same objects in both places, the checkpoint dedups them.
    """
    archive.track(model)
    tracked = archive._tf_trackable
    for collection in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(tracked, collection, [getattr(v, "value", v) for v in getattr(tracked, collection)])


class SavedModelRunner:
    """Runs an exported SavedModel's `serve_images` (or `serving_default` on encoded bytes)."""

    def __init__(self, directory: str):
        self.module = tf.saved_model.load(directory)
        self.serve_images = self.module.signatures["serve_images"]
        self.serve_bytes = self.module.signatures["serving_default"]
        self.image_size = int(self.serve_images.structured_input_signature[1]["images"].shape[1])

    def predict(self, images, batch_size: int = 32):
        import numpy as np

        batches = [
            self.serve_images(images=tf.constant(images[i : i + batch_size], tf.uint8))["probabilities"].numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)

    def predict_bytes(self, encoded: list[bytes]):
        return self.serve_bytes(image_bytes=tf.constant(encoded))["probabilities"].numpy()
