"""Which backbone layers train, and in which mode, in each phase: always on purpose.

Keras 3 ignores `training=False` on a nested backbone under `fit` (keras-team/keras#20285),
so the mode is set on the layers themselves:
- A frozen layer (`trainable=False`) makes BatchNormalization use its moving statistics.
- Dropout has no trainable switch, so the backbone's own dropout / drop-connect is
  turned off (rate 0) in frozen layers and restored in unfrozen ones.
- In the fine-tune phase, BatchNorm stays frozen unless the recipe says `batchnorm: train`.
"""

from __future__ import annotations

import keras


class BackboneFreezer:
    """Switches one backbone between the head phase and the fine-tune phase."""

    def __init__(self, backbone: keras.Model):
        self.backbone = backbone
        self._dropout_rates = {
            layer.name: layer.rate for layer in backbone.layers if isinstance(layer, keras.layers.Dropout)
        }

    def freeze(self) -> None:
        """Head phase: the backbone computes exactly its inference features."""
        self.backbone.trainable = False
        self._set_dropout(active_from=len(self.backbone.layers))

    def unfreeze(self, first: int, batchnorm: str) -> None:
        """Fine-tune phase: train backbone layers `first` and up (`backbone_layers.first_trainable_index`)."""
        self.backbone.trainable = True
        for index, layer in enumerate(self.backbone.layers):
            frozen = index < first or (batchnorm == "frozen" and isinstance(layer, keras.layers.BatchNormalization))
            layer.trainable = not frozen
        self._set_dropout(active_from=first)

    def restore(self) -> None:
        """Put the original dropout rates back so the saved model's config is the architecture's."""
        self._set_dropout(active_from=0)

    def _set_dropout(self, active_from: int) -> None:
        for index, layer in enumerate(self.backbone.layers):
            if layer.name in self._dropout_rates:
                layer.rate = self._dropout_rates[layer.name] if index >= active_from else 0.0
