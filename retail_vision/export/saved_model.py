"""SavedModel for TF Serving, written with `tf.saved_model.save`, with three signatures.

- `serving_default`: `image_bytes` (tf.string [None], encoded JPEG/PNG/BMP/GIF/WebP), decoded,
  resized and normalised inside the graph, so a REST client sends `{"instances": [{"b64": ...}]}`.
- `serve_images`: `images` (uint8 RGB [None, H, W, 3]), already resized.
- `embed`: `image_bytes` as above -> `embedding` only.
The two classifying signatures return:
    probabilities  [None, C] in labels.txt order (calibrated)
    embedding      [None, D] L2-normalised pooled features (cosine similarity = dot product)
    score          [None] the rejection score (rejection.json says which), higher = more like a known product
    unknown        [None] bool: score below the stored threshold, i.e. not one of the model's products
    labels, scores [None, k] the k most probable classes and their probabilities; for an unknown
                   photo, labels[0] is "unknown" with its rejection score, then the k-1 most probable
A model without a rejection threshold (a Keras model in hand) has no `score` or `unknown`.
"""

from __future__ import annotations

import os

import tensorflow as tf

from retail_vision.classifier import class_directions, open_world_outputs
from retail_vision.data.pipeline import decode_image, resize_image
from retail_vision.rejection import UNKNOWN_LABEL, Rejection, rejection_scores


def weights_module(classifier) -> tf.Module:
    """A module holding the classifier's weights as their own tf.Variables, which traced functions capture.

    Saved (or converted) from it, each weight is stored once: Keras's ExportArchive also tracks their
    Keras wrappers and saves every weight twice (keras-team/keras#23553: a SavedModel twice the size,
    and twice the memory in TF Serving).
    """
    module = tf.Module()
    module.variables_to_save = [variable.value for variable in classifier.variables]
    return module


def write_saved_model(classifier, labels: list[str], directory: str, resize: str = "crop",
                      rejection: Rejection | None = None, top_k: int = 5) -> None:
    size = int(classifier.input_shape[1])
    k = min(top_k, len(labels))
    label_table = tf.constant(labels)
    model = open_world_outputs(classifier)
    directions = tf.constant(class_directions(classifier)) if rejection is not None else None

    # Traced once, as a function every signature calls: the graph is stored once, not once per signature.
    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def outputs(images):
        result = model(images, training=False)
        probabilities = result["probabilities"]
        scores, indices = tf.math.top_k(probabilities, k=k)
        ranked = tf.gather(label_table, indices)
        answer = {"probabilities": probabilities, "labels": ranked, "scores": scores}
        if "embedding" in result:  # a classifier from before embeddings has none
            answer["embedding"] = result["embedding"]
        if rejection is None:
            return answer
        score = rejection_scores(rejection.score, probabilities, result["logits"], result["embedding"], directions)
        unknown = score < rejection.threshold
        rows = tf.shape(probabilities)[0]
        unknown_first = tf.concat([tf.fill([rows, 1], UNKNOWN_LABEL), ranked[:, : k - 1]], axis=1)
        score_first = tf.concat([score[:, None], scores[:, : k - 1]], axis=1)
        return {**answer, "score": score, "unknown": unknown,
                "labels": tf.where(unknown[:, None], unknown_first, ranked),
                "scores": tf.where(unknown[:, None], score_first, scores)}

    def decoded(image_bytes):
        return tf.map_fn(
            lambda encoded: resize_image(decode_image(encoded), size, resize),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )

    bytes_spec = [tf.TensorSpec([None], tf.string, name="image_bytes")]
    module = weights_module(classifier)
    module.serve_bytes = tf.function(lambda image_bytes: outputs(decoded(image_bytes)), input_signature=bytes_spec,
                                     autograph=False)
    module.serve_images = tf.function(lambda images: outputs(tf.cast(images, tf.float32)), autograph=False,
                                      input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    signatures = {"serving_default": module.serve_bytes, "serve_images": module.serve_images}
    if "embedding" in model.output:
        module.embed = tf.function(lambda image_bytes: {"embedding": outputs(decoded(image_bytes))["embedding"]},
                                   input_signature=bytes_spec, autograph=False)
        signatures["embed"] = module.embed
    tf.saved_model.save(module, directory, signatures=signatures)
    os.makedirs(os.path.join(directory, "assets"), exist_ok=True)
    with open(os.path.join(directory, "assets", "labels.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(labels) + "\n")
