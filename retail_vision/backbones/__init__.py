"""Backbone registry. Importing this package registers every family (no TensorFlow import)."""

from retail_vision.backbones import efficientnet_lite, keras_applications  # noqa: F401  (registers)
from retail_vision.backbones._registry import BackboneSpec, get, names, unknown_name_message

__all__ = ["BackboneSpec", "get", "names", "unknown_name_message"]
