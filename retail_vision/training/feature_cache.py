"""Cached activations: the frozen layers run once per image, training runs on what they computed.

While layers are frozen their output depends only on the input image, so it is computed once
per image (K augmented views when augmentation is on) and kept in memory, or in files under
the run directory when it does not fit there:
- head phase: the whole backbone is frozen; the head trains on the pooled features.
- fine-tune phase with a partial unfreeze (`train.fine_tune.unfreeze: block6a_expand_conv`):
  the layers below the first unfrozen one run once; the unfrozen top trains on their output.
  The head phase then takes its pooled features from the same activations (one pass through
  the still-frozen top), so the bottom of the backbone runs once for both phases.
The models trained here are made of the classifier's own layers, so the trained weights are
already inside the full model: nothing is copied back. What is cached, and whether in memory
or on disk, is decided by `plan`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from retail_vision.classifier import BACKBONE_LAYER, HEAD_LAYERS, POOL_LAYER, get_backbone
from retail_vision.console import Progress
from retail_vision.data import pipeline
from retail_vision.training import row_files

VIEW_DRAWS = 2**32  # random draws set aside per augmented view: far more than its batches take


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
    `folder`: None keeps everything in memory; a folder keeps it in files there, one per view
    (row_files.py), and reuses the whole files an interrupted run of the same plan left.
    `counts`: (training images, validation images), to size the cache before it is filled.
    """

    def __init__(self, classifier, cut, train_ds, val_ds, augmenter, views: int, counts: tuple[int, int],
                 folder: str | None = None, log=None):
        if BACKBONE_LAYER not in [layer.name for layer in classifier.layers]:
            raise ValueError("activation caching needs a classifier built by build_classifier")
        self.classifier, self.cut, self.views, self.folder = classifier, cut, views, folder
        self.opened: list[row_files.ViewFiles] = []  # closed by close()
        self.num_classes = classifier.output.shape[-1]
        if folder:
            os.makedirs(folder, exist_ok=True)
        bottom = feature_extractor(classifier) if cut is None else bottom_model(classifier, cut)
        dtype = "float32" if cut is None else "float16"
        started = time.perf_counter()
        self.reused_files = 0
        self.train = self._extract(bottom, train_ds, counts[0], "train", augmenter, views, dtype, log)
        self.val = self._extract(bottom, val_ds, counts[1], "val", None, 1, dtype)
        self.summary = {  # for metrics.json: what the cache cost
            "at": "pool" if cut is None else "fine_tune_cut",
            "views": views,
            "storage": "disk" if folder else "memory",
            "gigabytes": round((self.train[0].nbytes + self.val[0].nbytes) / 1e9, 3),
            "seconds": round(time.perf_counter() - started, 1),
            "reused_files": self.reused_files,  # whole view files a killed attempt of this run had written
        }

    def _extract(self, model, dataset, count, name, augmenter=None, views=1, dtype="float32", log=None):
        """(rows [views*count, ...], labels int32 [views*count]) of `model` on `dataset`, view-major.

        Rows are an array in memory, or row_files.ViewFiles of `{name}-{view}.npy` in the folder.
        `log(message)`, when given, hears how far each view is and when it is done (minutes each on a CPU).
        """

        @tf.function
        def step(images):
            if augmenter is not None:
                images = augmenter(images, training=True)
            return tf.cast(model(images, training=False), dtype)

        labels = np.empty(views * count, np.int32)
        in_memory, files = None, []
        for view in range(views):
            span = slice(view * count, (view + 1) * count)
            if self.folder:
                path = os.path.join(self.folder, f"{name}-{view + 1}.npy")
                labels_path = os.path.join(self.folder, f"{name}-{view + 1}-labels.npy")
                if row_files.is_complete(path) and os.path.exists(labels_path):
                    files.append(row_files.RowFile(path))
                    labels[span] = np.load(labels_path)
                    self.reused_files += 1
                    if log:
                        log(f"  view {view + 1}/{views} reused: {path}")
                    continue
                writer = row_files.RowWriter(path, count)
            if augmenter is not None:
                _start_view(augmenter, view)
            started, at = time.perf_counter(), span.start
            progress = Progress(count, f"  view {view + 1}/{views}: cached", "images") if log else None
            for images, one_hot in dataset:
                rows = step(images).numpy()
                labels[at:at + len(rows)] = np.argmax(one_hot, axis=-1)
                if self.folder:
                    writer.append(rows)
                else:
                    if in_memory is None:
                        in_memory = np.empty((views * count, *rows.shape[1:]), rows.dtype)
                    in_memory[at:at + len(rows)] = rows
                at += len(rows)
                if progress:
                    progress.advance(len(rows))
            if at != span.stop:
                raise RuntimeError(f"the {name} images gave {at - span.start} rows where the plan counted {count}")
            if self.folder:
                _save_atomically(labels_path, labels[span])  # before the rows file: its name marks the view done
                files.append(writer.finish())
            if log:
                log(f"  view {view + 1}/{views} cached in {time.perf_counter() - started:.0f} s")
        if not self.folder:
            return in_memory, labels
        self.opened.append(row_files.ViewFiles(files))
        return self.opened[-1], labels

    def head_datasets(self, batch_size: int, seed: int, shard: ShardBatches | None = None):
        """(train, val) datasets of pooled features, for `head_model`."""
        train, val = self.train, self.val
        if self.cut is not None:  # pool the stored activations through the frozen top, once
            to_pooled = keras.Model(*_pooled_top(self.classifier, self.cut), name="frozen_top")
            train = (self._run(to_pooled, train[0], batch_size, "train-pooled"), train[1])
            val = (self._run(to_pooled, val[0], batch_size, "val-pooled"), val[1])
        return _datasets(train, val, batch_size, seed, self.views, self.num_classes, shard)

    def fine_tune_datasets(self, batch_size: int, seed: int, shard: ShardBatches | None = None):
        """(train, val) datasets of the cut activations, for `top_model`."""
        return _datasets(self.train, self.val, batch_size, seed, self.views, self.num_classes, shard)

    def _run(self, model: keras.Model, inputs, batch_size: int, name: str):
        """`model` on every stored row, stored the same way (in memory, or a file per view in the folder)."""

        @tf.function
        def step(x):
            return model(tf.cast(x, tf.float32), training=False)

        if not self.folder:
            return np.concatenate([step(inputs[i:i + batch_size]).numpy() for i in range(0, len(inputs), batch_size)])
        files = []
        for view, source in enumerate(inputs.files):
            path = os.path.join(self.folder, f"{name}-{view + 1}.npy")
            if not row_files.is_complete(path):
                writer = row_files.RowWriter(path, len(source))
                for i in range(0, len(source), batch_size):
                    writer.append(step(source.read_range(i, min(i + batch_size, len(source)))).numpy())
                writer.finish().close()
            files.append(row_files.RowFile(path))
        self.opened.append(row_files.ViewFiles(files))
        return self.opened[-1]

    def close(self) -> None:
        """Let go of the cache files (the caller deletes the folder)."""
        for files in self.opened:
            files.close()


def _start_view(augmenter: keras.Model, view: int) -> None:
    """Each view's random draws start at their own place in the seeded streams (`view` x VIEW_DRAWS).

    A view computed again in a resumed process then never repeats the draws of a view it reused.
    """
    for state in augmenter.variables:
        if state.name == "seed_generator_state":  # [seed, draws so far] of each random layer
            state.assign(tf.stack([state[0], tf.constant(view * VIEW_DRAWS, state.dtype)]))


def _save_atomically(path: str, array: np.ndarray) -> None:
    with open(f"{path}.tmp", "wb") as handle:
        np.save(handle, array)
    os.replace(f"{path}.tmp", path)


@dataclasses.dataclass(frozen=True)
class ShardBatches:
    """Training batches of a worker that trains on its own shard of the photos (several workers)."""

    batch_size: int  # rows per replica and step
    epoch_rows: int  # rows per epoch: this worker's share of the steps that every worker takes


def _datasets(train, val, batch_size: int, seed: int, views: int, num_classes: int, shard: ShardBatches | None = None):
    """Endless training batches, one augmented view of every photo per epoch, and validation batches.

    The rows are view-major (`FrozenActivations._extract`): epoch e trains on view e mod K,
    reshuffled (seeded), so each epoch sees every photo once with a fresh augmentation, as the
    uncached phase does, and K epochs see every view once. Batches never straddle two epochs:
    each epoch has ceil(N / batch_size) of them, as `steps_per_epoch` counts. Rows in files are
    read batch by batch in the same order, so both stores train the same model.
    `shard`: the rows are a worker's shard; each epoch fills `shard.epoch_rows` rows, the shuffled
    photos repeated from the start where they fall short, in batches of `shard.batch_size`.
    """
    count = len(train[1]) // views
    train_batch = shard.batch_size if shard else batch_size

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        if shard:
            order = tf.gather(order, tf.range(shard.epoch_rows, dtype=tf.int64) % count)
        return tf.data.Dataset.from_tensor_slices((epoch % views) * count + order).batch(train_batch)

    train_ds = (
        tf.data.Dataset.counter()  # epoch numbers; fit stops after its own
        .flat_map(epoch_batches)
        .map(_gather(*train, num_classes), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.range(len(val[1])).batch(batch_size).map(_gather(*val, num_classes))
    return pipeline.without_autotune_thread(train_ds), pipeline.without_autotune_thread(val_ds)


def _gather(rows, labels: np.ndarray, num_classes: int):
    """indices -> (rows as float32, one-hot labels): a gather in the graph, or positioned reads of the files."""
    labels = tf.constant(labels)
    if isinstance(rows, np.ndarray):
        table = tf.convert_to_tensor(rows)

        def read(indices):
            return tf.gather(table, indices)
    else:
        def read(indices):
            batch = tf.numpy_function(rows.read_rows, [indices], rows.dtype, stateful=False)
            batch.set_shape([None, *rows.row_shape])
            return batch

    def gather(indices):  # float16 activations train in float32
        return tf.cast(read(indices), tf.float32), tf.one_hot(tf.gather(labels, indices), num_classes)

    return gather
