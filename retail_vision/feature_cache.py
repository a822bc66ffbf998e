"""Feature caching for the head phase: run the frozen backbone once, then train the head in seconds.

While the backbone is frozen its pooled features depend only on the input image, so they are
computed once per image (K augmented views when augmentation is on) and the head trains on
them. The head model reuses the classifier's own dropout and Dense layers, so the trained
head is already inside the full model: nothing is copied back.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from retail_vision.classifier import BACKBONE_LAYER

HEAD_LAYERS = ("head_dropout", "predictions")
MEMORY_BUDGET_BYTES = 4 * 2**30  # `auto` caches when the features fit in this much memory


# Where a cached head phase was tested; under TPU strategies `auto` trains the head uncached.
STRATEGIES = ("none", "mirrored", "multi_worker")


def should_cache(setting, train_count: int, views: int, feature_dim: int, strategy: str = "none") -> bool:
    """`true`/`false` as asked; `auto` caches when the features fit the memory budget."""
    if setting != "auto":
        return bool(setting)
    if strategy not in STRATEGIES:
        return False
    return train_count * views * feature_dim * 4 <= MEMORY_BUDGET_BYTES


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """image (0..255) -> pooled backbone features, sharing the classifier's layers."""
    pooled = classifier.get_layer("pool").output
    return keras.Model(classifier.input, pooled, name="feature_extractor")


def head_model(classifier: keras.Model, model_class=keras.Model) -> keras.Model:
    """pooled features -> probabilities, made of the classifier's own head layers.

    `model_class`: multi_worker.TrainingModel when it trains on several workers.
    """
    features = keras.Input(shape=(classifier.get_layer("pool").output.shape[-1],), name="features")
    x = features
    for name in HEAD_LAYERS:
        x = classifier.get_layer(name)(x)
    return model_class(features, x, name="head")


def extract(extractor: keras.Model, dataset: tf.data.Dataset, augmenter=None, views: int = 1):
    """(features [views*N, D] float32, one-hot labels [views*N, C]) from a batched image dataset."""

    @tf.function
    def step(images):
        if augmenter is not None:
            images = augmenter(images, training=True)
        return extractor(images, training=False)

    features, labels = [], []
    for _ in range(views):
        for images, one_hot in dataset:
            features.append(step(images).numpy())
            labels.append(one_hot.numpy())
    return np.concatenate(features), np.concatenate(labels)


def cached_datasets(classifier, train_ds, val_ds, augmenter, views: int, batch_size: int, seed: int,
                    train_count: int, model_class=keras.Model):
    """The head model and its (train, val) datasets of cached features, plus steps per epoch.

    With K views the training set holds K*N features; each epoch draws N of them at random, so
    over K epochs the head sees every augmented view about once.
    """
    if BACKBONE_LAYER not in [layer.name for layer in classifier.layers]:
        raise ValueError("feature caching needs a classifier built by build_classifier")
    extractor = feature_extractor(classifier)
    train_features, train_labels = extract(extractor, train_ds, augmenter, views if augmenter else 1)
    val_features, val_labels = extract(extractor, val_ds)
    train = (
        tf.data.Dataset.from_tensor_slices((train_features, train_labels))
        .shuffle(len(train_features), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((val_features, val_labels)).batch(batch_size)
    return head_model(classifier, model_class), train, val, math.ceil(train_count / batch_size)
