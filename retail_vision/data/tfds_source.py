"""TensorFlow Datasets by name: `data.source: tfds:<name>`, optionally with `data.data_dir`.

Online, TFDS downloads and prepares the dataset; offline it must already be prepared in
`data_dir`, and anything else is a one-line error that says so.
"""

from __future__ import annotations

import tensorflow as tf

from retail_vision.errors import DataError

PREFIX = "tfds:"


def is_tfds(source: str) -> bool:
    return source.startswith(PREFIX)


def load_builder(source: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"{source}: needs tensorflow-datasets; pip install tensorflow-datasets") from None
    name = source[len(PREFIX):]
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError and friends
        raise DataError(f"{source}: {str(error).splitlines()[0]}") from None
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as error:
            where = data_dir or "~/tensorflow_datasets"
            raise DataError(
                f"{source}: not prepared in {where} and the download failed "
                f"({type(error).__name__}); prepare it on a machine online and copy it to data.data_dir"
            ) from None
    if "image" not in builder.info.features or "label" not in builder.info.features:
        raise DataError(f"{source}: expected features 'image' and 'label', found {list(builder.info.features)}")
    return builder


def class_names(builder) -> list[str]:
    return list(builder.info.features["label"].names)


def split_size(builder, split: str) -> int:
    import tensorflow_datasets as tfds

    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError, tfds.core.registered.DatasetNotFoundError):
        raise DataError(
            f"tfds split {split!r}: not in {builder.name}; known: {', '.join(builder.info.splits)}"
        ) from None


def images(builder, split: str) -> tf.data.Dataset:
    """(uint8 RGB image, int32 label) pairs of one split (TFDS slicing syntax allowed)."""
    dataset = builder.as_dataset(split=split, shuffle_files=False)

    def to_pair(example):
        image = example["image"]
        channels = image.shape[-1]  # static: TFDS features declare it
        if channels == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels != 3:
            image = image[..., :3]
        return image, tf.cast(example["label"], tf.int32)

    return dataset.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
