"""TFLite conversion for devices: float32, float16, dynamic-range and full-integer int8.

Every file takes uint8 RGB [1, H, W, 3] (the device only resizes) with normalisation inside
the model, and returns float32 probabilities (a classifier file) or the L2-normalised embedding
(an embedder file). Quantization choices are named constructors,
as in MediaPipe Model Maker: `Quantization.for_int8(representative_images)`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from retail_vision.recipe import TFLITE_KINDS as KINDS  # declared once, with the recipe schema


@dataclasses.dataclass(frozen=True)
class Quantization:
    kind: str
    representative_images: np.ndarray | None = None  # uint8 [N, H, W, 3], int8 calibration only

    @classmethod
    def for_float32(cls) -> "Quantization":
        return cls("float32")

    @classmethod
    def for_float16(cls) -> "Quantization":
        return cls("float16")

    @classmethod
    def for_dynamic(cls) -> "Quantization":
        return cls("dynamic")

    @classmethod
    def for_int8(cls, representative_images: np.ndarray) -> "Quantization":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 quantization needs representative images for calibration")
        return cls("int8", representative_images)


OUTPUTS = ("probabilities", "embedding")


def convert(classifier, quantization: Quantization, output: str = "probabilities") -> bytes:
    """Convert the Keras classifier (0..255 float input) to a TFLite flatbuffer of one output.

    The converter takes the traced function straight away, its weights held as `write_saved_model`
    holds them: no SavedModel is written and read back first (what keras.src.export.litert does),
    which took most of a float32 conversion of EfficientNet-Lite2.
    """
    from retail_vision.classifier import open_world_outputs
    from retail_vision.export.saved_model import weights_module

    model = open_world_outputs(classifier)
    size = int(classifier.input_shape[1])
    # int8: a float input calibrated on 0..255 pixels becomes a uint8 input with scale 1 and
    # zero point 0, so the device feeds raw pixels and every op inside runs in int8.
    input_dtype = tf.float32 if quantization.kind == "int8" else tf.uint8
    function = tf.function(lambda image: {output: model(tf.cast(image, tf.float32), training=False)[output]},
                           input_signature=[tf.TensorSpec([1, size, size, 3], input_dtype, name="image")],
                           autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()],
                                                                weights_module(classifier))
    if quantization.kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization.kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization.kind == "int8":
        converter.representative_dataset = _representative(quantization.representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    flatbuffer = converter.convert()
    if quantization.kind == "int8":
        check_raw_pixel_input(flatbuffer)
    return flatbuffer


def _representative(images: np.ndarray) -> Callable:
    """Calibration batches of one image, each with one black and one white pixel.

    The uint8 input then calibrates to exactly 0..255, i.e. scale 1 and zero point 0, so a device
    feeds raw pixels. Whole black/white frames would do the same but widen the ranges of the
    activations inside and cost accuracy; two pixels per image do not.
    """

    def generate():
        for image in images:
            pinned = image.astype(np.float32)
            pinned[0, 0] = 0.0
            pinned[-1, -1] = 255.0
            yield [pinned[None]]

    return generate


def check_raw_pixel_input(model: bytes) -> None:
    """An int8 file must take raw pixels: input scale 1, zero point 0."""
    from ai_edge_litert.interpreter import Interpreter

    scale, zero_point = Interpreter(model_content=model).get_input_details()[0]["quantization"]
    if not (abs(scale - 1.0) < 1e-6 and zero_point == 0):
        raise RuntimeError(f"int8 input quantization is scale {scale}, zero point {zero_point}; expected 1 and 0")
