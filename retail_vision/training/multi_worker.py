"""Keras 3 `fit` under MultiWorkerMirroredStrategy: the training model that works around keras-team/keras#20585.

Keras 3.15's TensorFlow trainer fails in two places when the strategy spans several workers:
- before the first epoch, `fit` reduces one (images, labels) batch with `strategy.reduce` to build
  the model symbolically; across workers `reduce` takes a single tensor, not a tuple;
- after every step it averages the scalar logs with `strategy.reduce("MEAN", log, axis=0)`, and a
  scalar has no axis 0.
The first is skipped when the training model is built outside the strategy's scope: Keras then
defers building the optimizer and metrics until the first step is traced, as without a strategy
(so the trainer builds every phase's training model outside the scope and compiles it inside).
`TrainingModel` gives each step log a length-1 axis for the second.

The epoch logs that callbacks see are read from the metrics' variables, which sum over all
workers, so every worker gets the same values and takes the same decisions (best epoch, early
stopping): a worker that stopped alone would leave the others waiting in a collective.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class TrainingModel(keras.Model):
    """A functional model (`TrainingModel(inputs, outputs)`) that `fit` and `evaluate` can run on several workers.

    Build it outside the strategy's scope, then compile and fit it inside.
    """

    def train_step(self, data):
        return _with_replica_axis(super().train_step(data))

    def test_step(self, data):
        return _with_replica_axis(super().test_step(data))


def _with_replica_axis(logs: dict) -> dict:
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
