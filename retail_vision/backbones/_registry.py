"""The backbone registry: each backbone is data (size, preprocessing, weights) next to its builder.

Registries fail loudly: a duplicate name raises, an unknown name lists the known ones.
Nothing here imports TensorFlow, so `retail-vision backbones` answers fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

from retail_vision.errors import UserError


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a recipe needs to know about a backbone, declared once.

    Attributes:
        name: registry key used in recipes (`model.backbone`).
        family: the module that builds it (for `retail-vision backbones`).
        build: `build(weights) -> keras.Model` taking RGB already mapped by `scale`/`offset`
            (any square size) and returning the last feature map (no pooling, no
            classifier). `weights` is "imagenet", "none", or a path to a weights file.
        input_size: default square input side in pixels.
        scale, offset: the preprocessing the weights expect, `x * scale + offset` on 0..255
            RGB; (1.0, 0.0) when the keras.applications model normalises inside itself.
        weight_source: where `weights: imagenet` comes from, in words.
        feature_dim: channels of the last feature map.
        description: one line for `retail-vision backbones`.
        build_imagenet_classifier: optional `() -> keras.Model` with the original
            1000-class head (0..255 RGB in, ImageNet probabilities or logits out).
    """

    name: str
    family: str
    build: Callable
    input_size: int
    scale: float
    offset: float
    weight_source: str
    feature_dim: int
    description: str
    build_imagenet_classifier: Callable | None = None


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise UserError(f"model.backbone: {unknown_name_message(name)}")
    return _REGISTRY[name]


def unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown backbone {name!r}; {hint}known: {', '.join(sorted(_REGISTRY))}"


def names() -> list[str]:
    return list(_REGISTRY)
