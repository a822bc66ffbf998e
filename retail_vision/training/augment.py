"""Recipe `augment` section -> Keras preprocessing layers that run inside the train step.

They sit in the training model only (in front of the classifier), so they run on the
accelerator, are active only while training, and never reach a saved or exported model.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf


def build_augmenter(config, seed: int) -> keras.Sequential | None:
    """A Sequential of random layers for 0..255 float images, or None when augmentation is off."""
    if not config.active:
        return None
    layers = []
    if config.crop_area < 1.0:
        layers.append(RandomResizedCrop(config.crop_area, seed=seed + 8))
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.translation:
        layers.append(
            keras.layers.RandomTranslation(config.translation, config.translation, fill_mode="reflect", seed=seed + 3)
        )
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 4))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 5))
    if config.rand_augment:
        layers.append(DrawnOpsRandAugment(value_range=(0, 255), factor=config.rand_augment, seed=seed + 7))
    return keras.Sequential(layers, name="augment")


class RandomResizedCrop(keras.layers.Layer):
    """A box of each image, of a random share of its area (`min_area` to 1, uniform) and aspect ratio
    (3:4 to 4:3, log-uniform), resized back to the image's size: Inception's crop, drawn as
    torchvision's RandomResizedCrop draws it, except that a side longer than the image is cut to it
    (torchvision draws again). Keras 3 has no such layer (KerasCV had).
    """

    def __init__(self, min_area: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.min_area = min_area
        self.seed = seed
        # A Keras seed stream, like the other layers': the feature cache moves it so each view draws its own boxes
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        count = tf.shape(images)[0]
        area = keras.random.uniform((count,), self.min_area, 1.0, seed=self.seed_generator)
        aspect = tf.exp(keras.random.uniform((count,), math.log(3 / 4), math.log(4 / 3), seed=self.seed_generator))
        height = tf.minimum(tf.sqrt(area / aspect), 1.0)  # in shares of the side: the images are square
        width = tf.minimum(tf.sqrt(area * aspect), 1.0)
        top = keras.random.uniform((count,), seed=self.seed_generator) * (1.0 - height)
        left = keras.random.uniform((count,), seed=self.seed_generator) * (1.0 - width)
        boxes = tf.stack([top, left, top + height, left + width], axis=1)
        cropped = tf.image.crop_and_resize(images, boxes, tf.range(count), tf.shape(images)[1:3])
        return tf.cast(cropped, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_area": self.min_area, "seed": self.seed}


class DrawnOpsRandAugment(keras.layers.RandAugment):
    """Keras's RandAugment (the same draws, the same images) that runs only the operations it draws.

    Keras's own computes all eleven operations for each of its draws and keeps the drawn one
    (`python benchmarks/rand_augment_cost.py` times both); a switch runs the drawn one alone.
    """

    def transform_images(self, images, transformation, training=True):
        images = tf.cast(images, self.compute_dtype)
        if not training:
            return images
        operations = [(getattr(self, name), drawn) for name, drawn in transformation["transforms"].items()]
        for draw in range(self.num_ops):
            branches = [functools.partial(layer.transform_images, images, drawn) for layer, drawn in operations]
            images = tf.switch_case(tf.cast(transformation["layer_idxes"][draw], tf.int32), branches)
        return images


def build_mixer(config, seed: int):
    """(inputs, one-hot labels) batch -> the same with pairs of examples mixed, or None when `augment.mix` is none.

    A map over training batches, not a layer in the model: it changes the labels too. It takes
    images or the activations a cached phase trains on (CutMix pastes a patch of their grid).
    """
    if config.mixing is None:
        return None
    # dtype: a dataset map, where no mixed-precision policy applies
    if config.mixing == "mixup":
        layer = keras.layers.MixUp(alpha=0.2, seed=seed + 6, dtype="float32")
    else:  # the share pasted is drawn from Beta(1, 1)
        layer = keras.layers.CutMix(factor=1.0, seed=seed + 6, dtype="float32")

    @tf.autograph.experimental.do_not_convert
    def mix(inputs, labels):
        mixed = layer({"images": inputs, "labels": labels})
        return mixed["images"], mixed["labels"]

    return mix
