"""keras.applications backbones: EfficientNet B0-B7, EfficientNetV2 B0-B3/S, MobileNetV2/V3.

`weights: imagenet` uses keras.applications' own download and cache (~/.keras/models, or
$KERAS_HOME/models). Offline and not cached, the error names the file and where to put it.
"""

from __future__ import annotations

import os
import re

from retail_vision.backbones._registry import BackboneSpec, register
from retail_vision.errors import WeightsError

_SOURCE = "keras.applications download (cached in ~/.keras/models)"


def _builder(app_name: str, **options):
    def build(weights: str):
        import keras

        app = getattr(keras.applications, app_name)
        keras_weights = None if weights == "none" else "imagenet" if weights == "imagenet" else None
        try:
            model = app(include_top=False, weights=keras_weights, input_shape=(None, None, 3), **options)
        except Exception as error:
            if weights != "imagenet":
                raise
            raise _offline_error(app_name, error) from None
        if weights not in ("none", "imagenet"):
            load_weights_file(model, weights)
        return model

    return build


def load_weights_file(model, path: str) -> None:
    if not os.path.isfile(path):
        raise WeightsError(f"model.weights: {path}: no such weights file (or use 'imagenet' or 'none')")
    try:
        model.load_weights(path)
    except Exception as error:
        raise WeightsError(f"model.weights: {path}: does not fit {model.name} ({str(error).splitlines()[0][:120]})") from None


def _offline_error(app_name: str, error: Exception) -> WeightsError:
    """keras.utils.get_file failed: name the URL, the file and the cache folder to put it in."""
    match = re.search(r"(https?://\S+?\.h5)", str(error))
    cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
    if match:
        url = match.group(1)
        return WeightsError(
            f"model.weights: imagenet weights for {app_name} are not cached and the download failed; "
            f"fetch {url} and put it at {os.path.join(cache, os.path.basename(url))}, "
            "or use weights: none, or an efficientnet_lite backbone (offline weights)"
        )
    return WeightsError(f"model.weights: could not load imagenet weights for {app_name}: {str(error).splitlines()[0]}")


def _register(name, app_name, size, features, scale=1.0, offset=0.0, description="", **options):
    register(
        BackboneSpec(
            name=name,
            family="keras_applications",
            build=_builder(app_name, **options),
            input_size=size,
            scale=scale,
            offset=offset,
            weight_source=_SOURCE,
            feature_dim=features,
            description=description,
        )
    )


# EfficientNet and EfficientNetV2 normalise inside the model: they take 0..255.
for _index, (_size, _features) in enumerate(
    [(224, 1280), (240, 1280), (260, 1408), (300, 1536), (380, 1792), (456, 2048), (528, 2304), (600, 2560)]
):
    _register(f"efficientnet_b{_index}", f"EfficientNetB{_index}", _size, _features,
              description=f"EfficientNet-B{_index}, ImageNet top-1 from the keras.applications table")
for _variant, _size, _features in [("B0", 224, 1280), ("B1", 240, 1280), ("B2", 260, 1408), ("B3", 300, 1536), ("S", 384, 1280)]:
    _register(f"efficientnetv2_{_variant.lower()}", f"EfficientNetV2{_variant}", _size, _features,
              description=f"EfficientNetV2-{_variant}: fused-MBConv, faster training than V1")
# MobileNetV2 expects [-1, 1]; MobileNetV3 rescales inside itself (include_preprocessing).
_register("mobilenet_v2", "MobileNetV2", 224, 1280, scale=1 / 127.5, offset=-1.0,
          description="MobileNetV2 1.0: small, fast, quantizes well")
_register("mobilenet_v3_small", "MobileNetV3Small", 224, 576,
          description="MobileNetV3-Small: the smallest; hard-swish, squeeze-excite")
_register("mobilenet_v3_large", "MobileNetV3Large", 224, 960,
          description="MobileNetV3-Large: mobile accuracy/latency trade-off")
