"""A 2-conv backbone with BatchNorm and drop-connect, small enough to train in seconds.

`python tests/tiny_backbone.py fit ...` runs the real `retail-vision` CLI with it registered,
for tests that need a separate process (kill and resume).
"""

import sys

NAME = "tiny_test_cnn"


def build(weights):
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Dropout(0.3, noise_shape=(None, 1, 1, 1), name="drop_connect")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    model = keras.Model(inputs, x, name="tiny")
    if weights not in ("none", "imagenet"):  # a file: the "pretrained" case of partial fine-tuning
        model.load_weights(weights)
    return model


def register():
    from retail_vision.backbones import _registry
    from retail_vision.backbones._registry import BackboneSpec

    if NAME not in _registry._REGISTRY:
        _registry.register(BackboneSpec(NAME, "test", build, 32, 1 / 127.5, -1.0, "none (tests only)", 16, "tests only"))


def split_cpu(count: int) -> None:
    """Present the CPU as `count` logical devices, so MirroredStrategy has replicas to mirror."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


if __name__ == "__main__":
    import os
    import pathlib

    # The retail_vision of this checkout, not the installed one (which may be another worktree's).
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    if os.environ.get("TINY_LOGICAL_CPUS"):
        split_cpu(int(os.environ["TINY_LOGICAL_CPUS"]))
    register()
    from retail_vision.cli import main

    main(sys.argv[1:], prog_name="retail-vision")
