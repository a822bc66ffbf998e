"""Cached activations: the frozen layers run once per image, training runs on what they computed.

While layers are frozen their output depends only on the input image, so it is computed once
per image (K augmented views when augmentation is on) and kept in memory:
- head phase: the whole backbone is frozen; the head trains on the pooled features.
- fine-tune phase with a partial unfreeze (`train.fine_tune.unfreeze: block6a_expand_conv`):
  the layers below the first unfrozen one run once; the unfrozen top trains on their output.
  The head phase then takes its pooled features from the same activations (one pass through
  the still-frozen top), so the bottom of the backbone runs once for both phases.
The models trained here are made of the classifier's own layers, so the trained weights are
already inside the full model: nothing is copied back. What is cached, where, and whether it
fits in memory is decided by `plan`.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from retail_vision.classifier import BACKBONE_LAYER, HEAD_LAYERS, POOL_LAYER, get_backbone
from retail_vision.data import pipeline


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """image (0..255) -> pooled backbone features, sharing the classifier's layers."""
    pooled = classifier.get_layer(POOL_LAYER).output
    return keras.Model(classifier.input, pooled, name="feature_extractor")


def head_model(classifier: keras.Model, model_class=keras.Model) -> keras.Model:
    """pooled features -> probabilities, made of the classifier's own head layers.

    `model_class`: multi_worker.TrainingModel when it trains on several workers.
    """
    features = keras.Input(shape=(classifier.get_layer(POOL_LAYER).output.shape[-1],), name="features")
    x = features
    for name in HEAD_LAYERS:
        x = classifier.get_layer(name)(x)
    return model_class(features, x, name="head")


def top_model(classifier: keras.Model, cut, model_class=keras.Model) -> keras.Model:
    """cut activations -> probabilities: the unfrozen top of the backbone and the head, shared layers."""
    activations, x = _pooled_top(classifier, cut)
    for name in HEAD_LAYERS:
        x = classifier.get_layer(name)(x)
    return model_class(activations, x, name="top_and_head")


def _pooled_top(classifier: keras.Model, cut):
    """(input, pooled features) of the backbone's top from `cut`, on the classifier's own layers."""
    activations = keras.Input(shape=cut.shape[1:], name="activations")
    backbone_top = keras.Model(cut, get_backbone(classifier).output, name="backbone_top")
    return activations, classifier.get_layer(POOL_LAYER)(backbone_top(activations))


def bottom_model(classifier: keras.Model, cut) -> keras.Model:
    """image (0..255) -> cut activations: preprocessing and the frozen bottom of the backbone."""
    backbone = get_backbone(classifier)
    images = keras.Input(shape=classifier.input.shape[1:], name="image")
    x = classifier.get_layer("preprocess")(images)
    return keras.Model(images, keras.Model(backbone.input, cut, name="backbone_bottom")(x), name="bottom")


# === The cache ===


class FrozenActivations:
    """The frozen part's output for every training view and validation image, and the models that train on it.

    `cut`: None caches the pooled features (head phase only); a tensor from
    `backbone_layers.fine_tune_cut` caches the bottom's output there (both phases). Activation
    maps are kept in float16, half of float32's memory; pooled features stay float32.
    """

    def __init__(self, classifier, cut, train_ds, val_ds, augmenter, views: int, log=None):
        if BACKBONE_LAYER not in [layer.name for layer in classifier.layers]:
            raise ValueError("activation caching needs a classifier built by build_classifier")
        self.classifier = classifier
        self.cut = cut
        self.views = views
        bottom = feature_extractor(classifier) if cut is None else bottom_model(classifier, cut)
        dtype = "float32" if cut is None else "float16"
        started = time.perf_counter()
        self.train = extract(bottom, train_ds, augmenter, views, dtype, log)
        self.val = extract(bottom, val_ds, dtype=dtype)
        self.summary = {  # for metrics.json: what the cache cost
            "at": "pool" if cut is None else "fine_tune_cut",
            "views": views,
            "gigabytes": round((self.train[0].nbytes + self.val[0].nbytes) / 1e9, 3),
            "seconds": round(time.perf_counter() - started, 1),
        }

    def head_datasets(self, batch_size: int, seed: int):
        """(train, val) datasets of pooled features, for `head_model`."""
        train, val = self.train, self.val
        if self.cut is not None:  # pool the stored activations through the frozen top, once
            to_pooled = keras.Model(*_pooled_top(self.classifier, self.cut), name="frozen_top")
            train = (_run(to_pooled, train[0], batch_size), train[1])
            val = (_run(to_pooled, val[0], batch_size), val[1])
        return _datasets(train, val, batch_size, seed, self.views)

    def fine_tune_datasets(self, batch_size: int, seed: int):
        """(train, val) datasets of the cut activations, for `top_model`."""
        return _datasets(self.train, self.val, batch_size, seed, self.views)


def extract(model: keras.Model, dataset: tf.data.Dataset, augmenter=None, views: int = 1, dtype: str = "float32",
            log=None):
    """(activations [views*N, ...], one-hot labels [views*N, C]) from a batched image dataset.

    `log(message)`, when given, hears about each finished view (minutes each on a CPU).
    """

    @tf.function
    def step(images):
        if augmenter is not None:
            images = augmenter(images, training=True)
        return tf.cast(model(images, training=False), dtype)

    outputs, labels = [], []
    for view in range(views):
        started = time.perf_counter()
        for images, one_hot in dataset:
            outputs.append(step(images).numpy())
            labels.append(one_hot.numpy())
        if log:
            log(f"  view {view + 1}/{views} cached in {time.perf_counter() - started:.0f} s")
    return np.concatenate(outputs), np.concatenate(labels)


def _run(model: keras.Model, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    @tf.function
    def step(x):
        return model(tf.cast(x, tf.float32), training=False)

    return np.concatenate([step(inputs[i:i + batch_size]).numpy() for i in range(0, len(inputs), batch_size)])


def _datasets(train, val, batch_size: int, seed: int, views: int):
    """Endless training batches, one augmented view of every photo per epoch, and validation batches.

    The arrays are view-major (`extract`): epoch e trains on view e mod K, reshuffled (seeded),
    so each epoch sees every photo once with a fresh augmentation, as the uncached phase does,
    and K epochs see every view once. Batches never straddle two epochs: each epoch has
    ceil(N / batch_size) of them, as `steps_per_epoch` counts.
    """
    features, labels = tf.convert_to_tensor(train[0]), tf.convert_to_tensor(train[1])
    count = len(train[0]) // views

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices((epoch % views) * count + order).batch(batch_size)

    def gather(rows):  # float16 activations train in float32
        return tf.cast(tf.gather(features, rows), tf.float32), tf.gather(labels, rows)

    train_ds = (
        tf.data.Dataset.counter()  # epoch numbers; fit stops after its own
        .flat_map(epoch_batches)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices(val).batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return pipeline.without_autotune_thread(train_ds), pipeline.without_autotune_thread(val_ds)
