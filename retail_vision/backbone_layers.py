"""Naming a place in a backbone: where the fine-tune starts, and where its frozen bottom can be cut off.

`plan` uses these to check a recipe before training; the training code uses them on the real
backbone with the index the plan resolved.
"""

from __future__ import annotations

import difflib

import keras

from retail_vision.errors import RecipeError


def first_trainable_index(backbone: keras.Model, unfreeze: str | int) -> int:
    """'all' -> 0; N -> the top N layers; a layer name -> that layer and everything above it."""
    layers = backbone.layers
    if unfreeze == "all":
        return 0
    if isinstance(unfreeze, int):
        if not 1 <= unfreeze <= len(layers):
            raise RecipeError(
                f"train.fine_tune.unfreeze: received {unfreeze}; the backbone has {len(layers)} layers, "
                f"use 1..{len(layers)} or 'all'"
            )
        return len(layers) - unfreeze
    names = [layer.name for layer in layers]
    if unfreeze not in names:
        close = difflib.get_close_matches(unfreeze, names, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else "see the layer names in model.summary()"
        raise RecipeError(f"train.fine_tune.unfreeze: no layer named {unfreeze!r} in {backbone.name}; {hint}")
    return names.index(unfreeze)


def fine_tune_cut(backbone: keras.Model, first_trainable: int):
    """The tensor feeding backbone layer `first_trainable` when everything above depends on it alone.

    None when nothing below is frozen, or when the layer sits inside a block whose residual
    connection reaches below it (the top would need a second, uncached input).
    """
    layers = backbone.layers
    if not any(not isinstance(layer, keras.layers.InputLayer) for layer in layers[:first_trainable]):
        return None
    cut = layers[first_trainable].input
    if not isinstance(cut, keras.KerasTensor):  # a layer with several inputs (Add, Concatenate)
        return None
    try:
        keras.Model(cut, backbone.output)
    except ValueError:  # "not connected": a residual crosses the cut
        return None
    return cut


def clean_cut_names(backbone: keras.Model) -> list[str]:
    """Names of the layers a cached fine-tune can start at, bottom to top (for error messages)."""
    return [layer.name for index, layer in enumerate(backbone.layers) if fine_tune_cut(backbone, index) is not None]


def nearest_cuts(backbone: keras.Model, first: int) -> str:
    """The block boundaries just below and above layer `first`, quoted, for messages."""
    names = [layer.name for layer in backbone.layers]
    cuts = clean_cut_names(backbone)
    below = [name for name in cuts if names.index(name) < first][-1:]
    above = [name for name in cuts if names.index(name) > first][:1]
    return ", ".join(repr(name) for name in below + above)
