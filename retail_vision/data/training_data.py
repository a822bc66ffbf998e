"""A recipe's `data` section resolved: which images train, which validate, which were skipped.

`resolve_training_data` lists and scans files (no TensorFlow for folders and manifests, so
`retail-vision check` is quick); `TrainingData.datasets` builds the tf.data pipelines.
"""

from __future__ import annotations

import dataclasses

from retail_vision.data import sources
from retail_vision.data.scan import SkippedFile, scan
from retail_vision.errors import DataError


@dataclasses.dataclass
class TrainingData:
    class_names: list[str]
    train: sources.Examples | None  # None for TFDS sources
    validation: sources.Examples | None
    skipped: list[SkippedFile]
    test: sources.Examples | None = None  # scored once at the end, never tuned on (data.test)
    tfds_builder: object = None
    tfds_splits: tuple[str, str] | None = None
    train_count: int = 0
    validation_count: int = 0

    def train_class_counts(self) -> dict[str, int]:
        return self.train.counts() if self.train is not None else {}

    def datasets(self, image_size: int, resize: str, batch_size: int, seed: int, cache: bool,
                 shard: tuple[int, int] | None = None):
        """(train, validation) tf.data datasets of float32 0..255 images and one-hot labels.

        `cache`: keep the decoded images in memory after the first epoch (the plan decides whether they fit);
        without it the training files are shuffled before decoding, so memory stays bounded at any size.
        `shard`: (index, count): the training photos index, index + count, ... only (`shard_size` of them),
        a worker's share of the activation cache.
        """
        from retail_vision.data import pipeline, tfds_source

        index, count = shard or (0, 1)
        train_count = shard_size(self.train_count, index, count)
        if self.tfds_builder is not None:
            train_split, val_split = self.tfds_splits
            train_images = tfds_source.images(self.tfds_builder, train_split).shard(count, index)
            val_images = tfds_source.images(self.tfds_builder, val_split)
            train_images = train_images.map(lambda im, lb: (pipeline.resize_image(im, image_size, resize), lb))
            val_images = val_images.map(lambda im, lb: (pipeline.resize_image(im, image_size, resize), lb))
        else:
            train = self.train.subset(list(range(index, len(self.train), count)))
            train_images = pipeline.files_dataset(train, image_size, resize, shuffle_seed=None if cache else seed)
            val_images = pipeline.files_dataset(self.validation, image_size, resize)
        num_classes = len(self.class_names)
        shuffle_images = cache or self.tfds_builder is not None  # else the files were shuffled
        train = pipeline.batched(train_images, num_classes, batch_size, shuffle_images, seed, cache, train_count)
        val = pipeline.batched(val_images, num_classes, batch_size, False, seed, cache, self.validation_count)
        return train, val


def shard_size(total: int, index: int, count: int) -> int:
    """How many of `total` rows the shard (index, count) holds: rows index, index + count, ..."""
    return len(range(index, total, count))


def resolve_training_data(data_config, seed: int) -> TrainingData:
    """Read the data section: list, split and scan the images. Raises DataError on bad data."""
    from retail_vision.data import tfds_source

    if tfds_source.is_tfds(data_config.source):
        return _resolve_tfds(data_config)
    outside = data_config.allow_outside_paths
    train = sources.load_examples(data_config.source, data_config.class_names, allow_outside_paths=outside)
    test = None
    if isinstance(data_config.test, str):
        test = sources.load_examples(data_config.test, data_config.class_names, train.class_names,
                                     allow_outside_paths=outside)
    elif data_config.test is not None:  # held out first, so validation never draws from it
        train, test = sources.stratified_split(train, data_config.test, seed, field="data.test")
    if isinstance(data_config.validation, str):
        validation = sources.load_examples(data_config.validation, data_config.class_names, train.class_names,
                                           allow_outside_paths=outside)
    else:
        train, validation = sources.stratified_split(train, data_config.validation, seed)
    train, skipped_train = scan(train)
    validation, skipped_val = scan(validation)
    skipped_test = []
    if test is not None:
        test, skipped_test = scan(test)
    _require_images(train, data_config.source)
    if len(validation) == 0:
        raise DataError(f"{data_config.validation}: no usable validation images")
    return TrainingData(
        class_names=train.class_names,
        train=train,
        validation=validation,
        skipped=skipped_train + skipped_val + skipped_test,
        test=test,
        train_count=len(train),
        validation_count=len(validation),
    )


def _require_images(train: sources.Examples, source: str) -> None:
    empty = [name for name, count in train.counts().items() if count == 0]
    if empty:
        raise DataError(f"{source}: class {empty[0]!r} has no usable training images after the scan")


def _resolve_tfds(data_config) -> TrainingData:
    from retail_vision.data import tfds_source

    if data_config.test is not None:
        raise DataError("data.test: not supported with a TFDS source yet; score a held-out split with "
                        "retail-vision evaluate after training")
    builder = tfds_source.load_builder(data_config.source, data_config.data_dir)
    if isinstance(data_config.validation, str):
        splits = ("train", data_config.validation)
    else:  # TFDS slicing: a contiguous, not stratified, hold-out
        held_out = round(data_config.validation * 100)
        if not 0 < held_out < 100:
            raise DataError(f"data.validation: received {data_config.validation}; use a fraction in (0.01, 0.99)")
        splits = (f"train[{held_out}%:]", f"train[:{held_out}%]")
    counts = [tfds_source.split_size(builder, split) for split in splits]
    return TrainingData(
        class_names=tfds_source.class_names(builder),
        train=None,
        validation=None,
        skipped=[],
        tfds_builder=builder,
        tfds_splits=splits,
        train_count=counts[0],
        validation_count=counts[1],
    )
