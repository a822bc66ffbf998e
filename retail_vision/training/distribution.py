"""tf.distribute for `fit`: one machine's GPUs (mirrored), several hosts (multi_worker), TPUs.

The recipe's batch size is the global batch; each replica gets batch / replicas (`plan` checks
that it divides and scales the learning rates for `lr_scaling: linear`). Under `multi_worker`
every worker runs `fit` in step with the others, and only the chief keeps what it writes
(`Distribution.is_chief`).
"""

from __future__ import annotations

import contextlib
import dataclasses


@dataclasses.dataclass
class Distribution:
    strategy: object | None  # a tf.distribute.Strategy, or None for plain single-device training
    replicas: int
    is_chief: bool = True  # writes the run directory, checkpoints and export; False on other workers

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def make(config) -> Distribution:
    """The strategy the recipe's `distribute` section asks for (the first TensorFlow work of a run)."""
    if config.strategy == "none":
        return Distribution(None, 1)
    import tensorflow as tf

    if config.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=config.devices or None)
    elif config.strategy == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()  # the cluster comes from TF_CONFIG
    else:  # tpu
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    chief = _is_chief(strategy.cluster_resolver) if config.strategy == "multi_worker" else True
    return Distribution(strategy, strategy.num_replicas_in_sync, chief)


def _is_chief(resolver) -> bool:
    """The tf.distribute convention: the `chief` task, or worker 0 when the cluster has no chief.

    Without TF_CONFIG the strategy runs on this host alone, which is then the chief.
    """
    if resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs
