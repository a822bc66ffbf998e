"""Keras 3 `fit` under MultiWorkerMirroredStrategy: the training model that works around keras-team/keras#20585.

Keras 3.15's TensorFlow trainer fails in two places when the strategy spans several workers:
- before the first epoch, `fit` reduces one (images, labels) batch with `strategy.reduce` to build
  the model symbolically; across workers `reduce` takes a single tensor, not a tuple;
- after every step it averages the scalar logs with `strategy.reduce("MEAN", log, axis=0)`, and a
  scalar has no axis 0.
`TrainingModel` skips the first (the optimizer and metrics are then built when the first step is
traced, as without a strategy) and gives each step log a length-1 axis for the second.

The epoch logs that callbacks see are read from the metrics' variables, which sum over all
workers, so every worker gets the same values and takes the same decisions (best epoch, early
stopping): a worker that stopped alone would leave the others waiting in a collective.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class TrainingModel(keras.Model):
    """A functional model (`TrainingModel(inputs, outputs)`) that `fit` and `evaluate` can run on several workers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Without a strategy of its own the trainer skips the symbolic build and takes the strategy
        # from the enclosing scope (`distribute_strategy`); `fit` must then run inside that scope.
        self._distribute_strategy = None

    def train_step(self, data):
        return _with_replica_axis(super().train_step(data))

    def test_step(self, data):
        return _with_replica_axis(super().test_step(data))


def _with_replica_axis(logs: dict) -> dict:
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
