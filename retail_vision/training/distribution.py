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
    worker: int = 0  # this host's place among the workers (multi_worker), as tf.distribute numbers them
    workers: int = 1

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
    if config.strategy != "multi_worker":
        return Distribution(strategy, strategy.num_replicas_in_sync)
    resolver = strategy.cluster_resolver
    return Distribution(strategy, strategy.num_replicas_in_sync, _is_chief(resolver), *_worker_position(resolver))


def _is_chief(resolver) -> bool:
    """The tf.distribute convention: the `chief` task, or worker 0 when the cluster has no chief.

    Without TF_CONFIG the strategy runs on this host alone, which is then the chief.
    """
    if resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def _worker_position(resolver) -> tuple[int, int]:
    """(this host's index, hosts that train): the chief first, then the workers in order, as tf.distribute's
    input pipelines are numbered (an evaluator task does not train). Without TF_CONFIG: (0, 1)."""
    if resolver.task_type is None:
        return 0, 1
    jobs = resolver.cluster_spec().as_dict()
    chiefs, workers = len(jobs.get("chief", [])), len(jobs.get("worker", []))
    return (resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id), chiefs + workers
