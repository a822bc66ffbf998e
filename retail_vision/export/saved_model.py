"""SavedModel for TF Serving, written with `tf.saved_model.save`, with two signatures.

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

    module = tf.Module()
    # The weights' own tf.Variables, which the endpoints capture: each is saved once. (Keras's
    # ExportArchive also tracks their Keras wrappers and saves every weight twice,
    # keras-team/keras#23553: a SavedModel twice the size, and twice the memory in TF Serving.)
    module.variables_to_save = [variable.value for variable in classifier.variables]
    module.serve_bytes = tf.function(serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    module.serve_images = tf.function(
        outputs, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    tf.saved_model.save(module, directory,
                        signatures={"serving_default": module.serve_bytes, "serve_images": module.serve_images})
    os.makedirs(os.path.join(directory, "assets"), exist_ok=True)
    with open(os.path.join(directory, "assets", "labels.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(labels) + "\n")
