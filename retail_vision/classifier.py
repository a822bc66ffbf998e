"""Backbone + head, with the backbone's preprocessing inside the graph.

The classifier takes RGB images in 0..255 (float32; uint8 values cast) at a fixed square
size, so exported models and scripts never repeat normalisation constants.
"""

from __future__ import annotations

import keras

from retail_vision import backbones

BACKBONE_LAYER = "backbone"  # the nested backbone model's name inside every classifier
POOL_LAYER = "pool"  # pooled backbone features
HEAD_LAYERS = ("head_dropout", "predictions")  # pooled features -> dropout -> Dense softmax (the logits inside)


def build_classifier(
    backbone: str,
    num_classes: int,
    weights: str = "imagenet",
    dropout: float = 0.2,
    image_size: int | None = None,
    name: str = "classifier",
) -> keras.Model:
    """image (0..255) -> preprocessing -> backbone -> pooling -> dropout -> Dense softmax (float32)."""
    spec = backbones.get(backbone)
    size = image_size or spec.input_size

    # === Layers ===
    feature_extractor = spec.build(weights)
    feature_extractor.name = BACKBONE_LAYER
    preprocess = keras.layers.Rescaling(spec.scale, spec.offset, name="preprocess")
    pool = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)
    head_dropout = keras.layers.Dropout(dropout, name=HEAD_LAYERS[0])
    predictions = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD_LAYERS[1])

    # === Functional Model ===
    images = keras.Input(shape=(size, size, 3), name="image")
    features = feature_extractor(preprocess(images))
    outputs = predictions(head_dropout(pool(features)))
    return keras.Model(images, outputs, name=name)


def get_backbone(classifier: keras.Model) -> keras.Model:
    return classifier.get_layer(BACKBONE_LAYER)
