"""Cached activations: the frozen layers run once per image, training runs on what they computed.

While layers are frozen their output depends only on the input image, so it is computed once
per image (K augmented views when augmentation is on) and kept in memory:
- head phase: the whole backbone is frozen; the head trains on the pooled features.
- fine-tune phase with a partial unfreeze (`train.fine_tune.unfreeze: block6a_expand_conv`):
  the layers below the first unfrozen one run once; the unfrozen top trains on their output.
  The head phase then takes its pooled features from the same activations (one pass through
  the still-frozen top), so the bottom of the backbone runs once for both phases.
The models trained here are made of the classifier's own layers, so the trained weights are
already inside the full model: nothing is copied back.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from retail_vision.classifier import BACKBONE_LAYER, get_backbone
from retail_vision.data import pipeline

HEAD_LAYERS = ("head_dropout", "predictions")
MEMORY_BUDGET_BYTES = 4 * 2**30  # `auto` caches when the activations fit in this much memory


# Where a cached phase was tested; under TPU strategies `auto` trains uncached.
STRATEGIES = ("none", "mirrored", "multi_worker")


def should_cache(setting, nbytes: int, strategy: str = "none") -> bool:
    """`true`/`false` as asked; `auto` caches when `nbytes` of activations fit the memory budget."""
    if setting != "auto":
        return bool(setting)
    return strategy in STRATEGIES and nbytes <= MEMORY_BUDGET_BYTES


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


# === Where the frozen bottom ends in a partial fine-tune ===


def fine_tune_cut(backbone: keras.Model, first_trainable: int):
    """The tensor feeding backbone layer `first_trainable` when everything above depends on it alone.

    None when nothing below is frozen, or when the layer sits inside a block whose residual
    connection reaches below it (the top would need a second, uncached input).
    """
    layers = backbone.layers
    if not any(not isinstance(layer, keras.layers.InputLayer) for layer in layers[:first_trainable]):
        return None
    cut = layers[first_trainable].input
    if not isinstance(cut, keras.KerasTensor):  # a layer with several inputs (Add, Concatenate)
        return None
    try:
        keras.Model(cut, backbone.output)
    except ValueError:  # "not connected": a residual crosses the cut
        return None
    return cut


def clean_cut_names(backbone: keras.Model) -> list[str]:
    """Names of the layers a cached fine-tune can start at, bottom to top (for error messages)."""
    return [layer.name for index, layer in enumerate(backbone.layers) if fine_tune_cut(backbone, index) is not None]


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
    return activations, classifier.get_layer("pool")(backbone_top(activations))


def bottom_model(classifier: keras.Model, cut) -> keras.Model:
    """image (0..255) -> cut activations: preprocessing and the frozen bottom of the backbone."""
    backbone = get_backbone(classifier)
    images = keras.Input(shape=classifier.input.shape[1:], name="image")
    x = classifier.get_layer("preprocess")(images)
    return keras.Model(images, keras.Model(backbone.input, cut, name="backbone_bottom")(x), name="bottom")


def bytes_per_view(model: keras.Model, image_size: int, dtype: str) -> int:
    """Memory one image's activations take in the cache (the shape at this image size)."""
    shape = model.compute_output_shape((1, image_size, image_size, 3))
    return math.prod(shape[1:]) * np.dtype(dtype).itemsize


# === The cache ===


class FrozenActivations:
    """The frozen part's output for every training view and validation image, and the models that train on it.

    `cut`: None caches the pooled features (head phase only); a tensor from `fine_tune_cut`
    caches the bottom's output there (both phases). Activation maps are kept in float16, half
    of float32's memory; pooled features stay float32.
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

    def head_phase(self, batch_size: int, seed: int, train_count: int, model_class=keras.Model):
        """(head model, train dataset, val dataset, steps per epoch) on pooled features."""
        train, val = self.train, self.val
        if self.cut is not None:  # pool the stored activations through the frozen top, once
            to_pooled = keras.Model(*_pooled_top(self.classifier, self.cut), name="frozen_top")
            train = (_run(to_pooled, train[0], batch_size), train[1])
            val = (_run(to_pooled, val[0], batch_size), val[1])
        datasets = _datasets(train, val, batch_size, seed, self.views)
        return head_model(self.classifier, model_class), *datasets, math.ceil(train_count / batch_size)

    def fine_tune_phase(self, batch_size: int, seed: int, train_count: int, model_class=keras.Model):
        """(top-and-head model, train dataset, val dataset, steps per epoch) on the cut activations."""
        datasets = _datasets(self.train, self.val, batch_size, seed, self.views)
        return top_model(self.classifier, self.cut, model_class), *datasets, math.ceil(train_count / batch_size)


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
