"""Backbone + head, with the backbone's preprocessing inside the graph.

The classifier takes RGB images in 0..255 (float32; uint8 values cast) at a fixed square
size, so exported models and scripts never repeat normalisation constants.

Two heads turn pooled features into logits:
- `softmax`: a Dense layer (weights and biases of any scale);
- `cosine`: scale * cos(features, class vector): every class is a unit direction in feature
  space, so a class added later from the mean embedding of a few photos (`enroll`) is on the
  same scale as the trained ones.
"""

from __future__ import annotations

import keras

from retail_vision import backbones
from retail_vision.recipe import HEADS

BACKBONE_LAYER = "backbone"  # the nested backbone model's name inside every classifier
POOL_LAYER = "pool"  # pooled backbone features
LOGITS_LAYER = "logits"
HEAD_LAYERS = ("head_dropout", LOGITS_LAYER, "predictions")  # pooled features -> dropout -> logits -> softmax
COSINE_SCALE = 16.0  # logits of the cosine head before calibration: cos 1 vs cos 0 is a 16-nat margin


@keras.saving.register_keras_serializable(package="retail_vision")
class CosineLogits(keras.layers.Layer):
    """logits[c] = scale[c] * (cos(features, kernel[:, c]) - gate[c] * nearest) + bias[c].

    Trained classes share one scale and a zero bias; neither is trained. Calibration divides
    both by the temperature; an enrolled class gets its own scale, bias and gate (enrollment.py).
    `class_means` holds each class's mean embedding (of its training photos, set at the end of
    fit; an enrolled class's prototype); `nearest` is a photo's highest cosine to the means of the
    classes with gate 0 (the trained ones), so an enrolled class wins a photo only when the
    photo is closer to it than to every trained class's photos. Models from before the means
    (`with_means` False) load as they were.
    """

    def __init__(self, units: int, scale: float = COSINE_SCALE, with_means: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.initial_scale, self.with_means = units, scale, with_means

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.scale = self.add_weight(name="scale", shape=(self.units,), trainable=False,
                                     initializer=keras.initializers.Constant(self.initial_scale))
        self.bias = self.add_weight(name="bias", shape=(self.units,), trainable=False, initializer="zeros")
        if self.with_means:
            self.class_means = self.add_weight(name="class_means", shape=(input_shape[-1], self.units),
                                               trainable=False, initializer="zeros")
            self.gate = self.add_weight(name="gate", shape=(self.units,), trainable=False, initializer="zeros")

    def call(self, features):
        ops = keras.ops
        features = ops.normalize(features, axis=-1)
        # The scale multiplies the constant directions, not the cosines: the TFLite converter folds it
        # into the matmul. Scaling the cosines instead, next to the gate term, cost a tiny test model
        # 8 points of int8 agreement with the float model; folded, it keeps full agreement.
        logits = ops.matmul(features, ops.normalize(self.kernel, axis=0) * self.scale) + self.bias
        if self.with_means:
            trained = ops.cast(ops.equal(self.gate, 0.0), features.dtype)
            to_means = ops.matmul(features, ops.normalize(self.class_means, axis=0))
            nearest = ops.max(to_means * trained - 2.0 * (1.0 - trained), axis=-1, keepdims=True)  # cos >= -1
            logits = logits - (self.scale * self.gate) * nearest
        return logits

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.initial_scale,
                "with_means": self.with_means}


def build_classifier(
    backbone: str,
    num_classes: int,
    weights: str = "imagenet",
    dropout: float = 0.2,
    image_size: int | None = None,
    name: str = "classifier",
    head: str = "cosine",
) -> keras.Model:
    """image (0..255) -> preprocessing -> backbone -> pooling -> dropout -> logits -> softmax (float32)."""
    if head not in HEADS:
        raise ValueError(f"head: {head!r}; choose from {', '.join(HEADS)}")
    spec = backbones.get(backbone)
    size = image_size or spec.input_size

    # === Layers ===
    feature_extractor = spec.build(weights)
    feature_extractor.name = BACKBONE_LAYER
    preprocess = keras.layers.Rescaling(spec.scale, spec.offset, name="preprocess")
    pool = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)
    head_dropout = keras.layers.Dropout(dropout, name=HEAD_LAYERS[0])
    if head == "cosine":
        logits = CosineLogits(num_classes, with_means=True, dtype="float32", name=LOGITS_LAYER)
    else:
        logits = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)
    predictions = keras.layers.Softmax(dtype="float32", name=HEAD_LAYERS[2])

    # === Functional Model ===
    images = keras.Input(shape=(size, size, 3), name="image")
    features = feature_extractor(preprocess(images))
    outputs = predictions(logits(head_dropout(pool(features))))
    return keras.Model(images, outputs, name=name)


def get_backbone(classifier: keras.Model) -> keras.Model:
    return classifier.get_layer(BACKBONE_LAYER)


def head_kind(classifier: keras.Model) -> str | None:
    """'softmax' or 'cosine'; None for a classifier from before the logits layer (one Dense softmax)."""
    try:
        layer = classifier.get_layer(LOGITS_LAYER)
    except ValueError:
        return None
    return "cosine" if isinstance(layer, CosineLogits) else "softmax"


def divide_logits(classifier: keras.Model, temperature: float) -> None:
    """logits / temperature, in the weights: the Dense kernel and bias, or the cosine scale and bias."""
    layer = classifier.get_layer(LOGITS_LAYER)
    if isinstance(layer, CosineLogits):  # its directions are normalised: dividing the kernel would change nothing
        layer.scale.assign(layer.scale / temperature)
        layer.bias.assign(layer.bias / temperature)
    else:
        layer.kernel.assign(layer.kernel / temperature)
        layer.bias.assign(layer.bias / temperature)


def store_class_means(classifier: keras.Model, batches) -> bool:
    """Set the cosine head's class means from `batches` of (images, one-hot labels); False if it has none."""
    import numpy as np

    layer = classifier.get_layer(LOGITS_LAYER)
    if not getattr(layer, "with_means", False):
        return False
    import tensorflow as tf

    model = keras.Model(classifier.input, classifier.get_layer(POOL_LAYER).output)
    embed = tf.function(lambda images: model(images, training=False), reduce_retracing=True)  # 1.8x eager
    sums = np.zeros(layer.class_means.shape[::-1], np.float64)  # [C, D]
    for images, one_hot in batches:
        pooled = np.asarray(embed(images), np.float64)
        sums += np.asarray(one_hot, np.float64).T @ (pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    layer.class_means.assign(sums.T.astype(np.float32))  # normalised in the layer; a class with no photo stays 0
    return True


def open_world_outputs(classifier: keras.Model) -> keras.Model:
    """image -> {probabilities, logits, embedding (L2-normalised pooled features)}, on the classifier's layers.

    A classifier from before the logits layer gives its probabilities only.
    """
    if head_kind(classifier) is None:
        return keras.Model(classifier.input, {"probabilities": classifier.output}, name="open_world_outputs")
    pooled = classifier.get_layer(POOL_LAYER).output
    embedding = keras.layers.UnitNormalization(dtype="float32", name="embedding")(pooled)
    return keras.Model(classifier.input, {"probabilities": classifier.output, "embedding": embedding,
                                          "logits": classifier.get_layer(LOGITS_LAYER).output},
                       name="open_world_outputs")


def head_outputs(classifier: keras.Model) -> keras.Model:
    """embedding -> {probabilities, logits} through the cosine head's own layers: the classifier's
    outputs for photos whose embeddings are known, with no backbone pass. The cosine head
    normalises what it is given, so the unit embedding stands for the pooled features."""
    if head_kind(classifier) != "cosine":
        raise ValueError("only a cosine head gives the same outputs from the unit embedding")
    embedding = keras.Input(shape=classifier.get_layer(POOL_LAYER).output.shape[1:], name="embedding")
    logits = classifier.get_layer(LOGITS_LAYER)(embedding)
    return keras.Model(embedding, {"probabilities": classifier.get_layer(HEAD_LAYERS[2])(logits), "logits": logits},
                       name="head_outputs")


def class_directions(classifier: keras.Model):
    """[D, C] unit class vectors of the head (the cosine head's directions, or the Dense kernel's columns)."""
    import numpy as np

    kernel = np.asarray(classifier.get_layer(LOGITS_LAYER).get_weights()[0], np.float32)
    return kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
