"""The tf.data pipeline: parallel decode, aspect-preserving resize, cache, seeded shuffle, batch, prefetch.

Images leave the pipeline as float32 RGB in 0..255 at the model's square size; the model
itself normalises them (preprocessing lives in the graph) and augments them on the accelerator.
"""

from __future__ import annotations

import os

import tensorflow as tf

from retail_vision.data import scan
from retail_vision.data.sources import Examples

AUTOTUNE = tf.data.AUTOTUNE


def without_autotune_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Turn off tf.data's autotuning model for a dataset that is iterated once per epoch.

    With it on, destroying an epoch's iterator waits for the autotuner's thread to wake from its
    sleep, which grows to tens of seconds on long epochs: fit stalled 20-35 s at the start of
    epochs (a gdb stack showed ~RootDataset::Iterator waiting on the autotune thread; TF 2.21,
    CPU). AUTOTUNE parallelism and prefetch fall back to TF's fixed defaults, and the steady step
    rate is unchanged (docs/BENCHMARKS.md, "fit against its ceiling").
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF (first frame)/WebP bytes -> uint8 RGB; grayscale and RGBA become RGB."""
    is_webp = tf.strings.regex_full_match(tf.strings.substr(encoded, 0, 12), "(?s)RIFF.{4}WEBP")
    image = tf.cond(
        is_webp,
        lambda: tf.io.decode_webp(encoded)[:, :, :3],  # RGB or RGBA as stored; decode_image knows no WebP
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8),
    )
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Keep the aspect ratio: scale the short side to `size` and center-crop, or fit and pad."""
    if mode == "pad":
        return tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, antialias=True)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    resized = tf.image.resize(image, new_shape, antialias=True)
    return tf.image.resize_with_crop_or_pad(resized, size, size)


def apply_exif_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn a decoded image upright by its EXIF orientation (1..8), as Pillow's exif_transpose does."""
    image = tf.convert_to_tensor(image)
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4: mirrored vertically
        lambda: tf.image.transpose(image),  # 5: transposed
        lambda: tf.image.rot90(image, 3),  # 6: on its left side: turn 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: transversed
        lambda: tf.image.rot90(image, 1),  # 8: on its right side: turn 90 degrees anticlockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def load_and_resize(path: tf.Tensor, size: int, mode: str, orientation=1) -> tf.Tensor:
    is_heif = tf.strings.regex_full_match(path, HEIF_FILES)
    image = tf.cond(is_heif, lambda: _decode_heif(path), lambda: decode_image(tf.io.read_file(path)))
    return resize_image(apply_exif_orientation(image, orientation), size, mode)


HEIF_FILES = r"(?is).*\.hei[cf]"


def _decode_heif(path: tf.Tensor) -> tf.Tensor:
    """HEIC/HEIF photo file -> uint8 RGB, through Pillow (the scan's pillow-heif): TensorFlow has no HEIF decoder."""
    image = tf.numpy_function(lambda raw: scan.rgb_pixels(os.fsdecode(raw.item())), [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def files_dataset(examples: Examples, size: int, mode: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(image float32 [size,size,3] in 0..255, label int32) from image files, decoded in parallel.

    `shuffle_seed`: shuffle the files anew each epoch before decoding them, so that no shuffle
    buffer of decoded images is needed (for images that are not cached: memory stays bounded).
    """
    orientations = examples.orientations or [1] * len(examples)
    # os.fsencode: file names that are not valid UTF-8 still reach tf.io.read_file byte for byte.
    paths = tf.constant([os.fsencode(path) for path in examples.paths], tf.string)
    dataset = tf.data.Dataset.from_tensor_slices(
        (paths, tf.constant(orientations, tf.int32), tf.constant(examples.labels, tf.int32))
    )
    if shuffle_seed is not None:
        dataset = dataset.shuffle(max(len(examples), 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.map(
        lambda path, orientation, label: (load_and_resize(path, size, mode, orientation), label),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def batched(
    images: tf.data.Dataset,
    num_classes: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    cache: bool,
    sample_count: int,
) -> tf.data.Dataset:
    """Cache decoded images in memory, shuffle (seeded, anew each epoch), one-hot, batch and prefetch.

    The cache holds uint8 pixels (rounded after the resize), a quarter of float32's memory:
    2,640 grocery photos at 224 px take 0.4 GB instead of 1.6 GB. `shuffle` holds every image
    in its buffer: for images that are not cached, shuffle the files instead (`files_dataset`).
    """
    if cache:
        images = images.map(lambda image, label: (tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8), label),
                            num_parallel_calls=AUTOTUNE)
        images = images.cache()
    if shuffle:
        images = images.shuffle(max(sample_count, 1), seed=seed, reshuffle_each_iteration=True)
    images = images.map(
        lambda image, label: (tf.cast(image, tf.float32), tf.one_hot(label, num_classes)), num_parallel_calls=AUTOTUNE
    )
    return without_autotune_thread(images.batch(batch_size).prefetch(AUTOTUNE))


def at_least_one_row_per_replica(dataset: tf.data.Dataset, replicas: int,
                                 class_weight: dict[int, float] | None = None) -> tf.data.Dataset:
    """(images, one-hot labels) batches -> (images, labels, sample weights) that never leave a replica empty.

    tf.distribute splits each global batch over the replicas, so a last batch of fewer rows than
    replicas hands some replica an empty batch, and oneDNN's convolution mishandles one (it
    returns its input: "Incompatible shapes: [8] vs. [0,32,32,3]" in the next BatchNorm). Such a
    batch is padded with copies of its first row at weight 0: every replica's loss is a mean over
    its own rows, so a padded replica adds 0 to the gradient as an empty one did, and accuracy
    skips the padding (the reported loss counts a padded row as a row of loss 0). `class_weight`
    is folded into the weights (Keras takes one or the other).
    """
    weights = None
    if class_weight:
        weights = tf.constant([class_weight[i] for i in range(len(class_weight))], tf.float32)

    def pad(images, labels):
        rows = tf.shape(images)[0]
        missing = tf.maximum(replicas - rows, 0)
        index = tf.concat([tf.range(rows), tf.zeros([missing], tf.int32)], 0)
        real = tf.ones([rows]) if weights is None else tf.gather(weights, tf.argmax(labels, axis=1))
        return tf.gather(images, index), tf.gather(labels, index), tf.concat([real, tf.zeros([missing])], 0)

    return without_autotune_thread(dataset.map(pad))
