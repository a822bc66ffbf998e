"""tf.distribute for `fit`: one machine's GPUs (mirrored), several hosts (multi_worker), TPUs.

The recipe's batch size is the global batch; each replica gets batch / replicas. The learning
rates are used as written (`lr_scaling: none`) or multiplied by the number of replicas
(`linear`, the rule of Goyal et al. for large-batch SGD). All strategies supported today run in
one process, which writes the run directory; multi-worker training is refused (see below).
"""

from __future__ import annotations

import contextlib
import dataclasses

from retail_vision.errors import RecipeError


@dataclasses.dataclass
class Distribution:
    strategy: object | None  # a tf.distribute.Strategy, or None for plain single-device training
    replicas: int
    lr_factor: float

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self, name: str, global_batch: int, lr_scaling: str) -> dict:
        return {"strategy": name, "replicas": self.replicas, "global_batch": global_batch,
                "per_replica_batch": global_batch // self.replicas, "lr_scaling": lr_scaling,
                "lr_factor": self.lr_factor}


def make(config, global_batch: int) -> Distribution:
    """The strategy the recipe's `distribute` section asks for, checked against the batch size."""
    if config.strategy == "none":
        return Distribution(None, 1, 1.0)
    import tensorflow as tf

    if config.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=config.devices or None)
    elif config.strategy == "multi_worker":
        # Keras 3 `fit` fails under MultiWorkerMirroredStrategy: its per-replica reductions assume
        # one host (keras-team/keras#20585, checked with Keras 3.15 / TF 2.21 on 2 local workers).
        # Refuse before any work rather than crash in the first step.
        raise RecipeError(
            "distribute.strategy: multi_worker does not train with Keras 3's fit yet (keras-team/keras#20585); "
            "use mirrored for the GPUs of one host"
        )
    else:  # tpu
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise RecipeError(
            f"train.batch_size: {global_batch} does not divide over {replicas} replicas; "
            f"use a multiple of {replicas}"
        )
    factor = float(replicas) if config.lr_scaling == "linear" else 1.0
    return Distribution(strategy, replicas, factor)
