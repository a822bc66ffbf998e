"""The two-phase fit: train the head on the frozen backbone, then fine-tune the backbone's top.

`fit(recipe)` is what `retail-vision fit` runs. It trains from `plan(recipe)`, which finds
everything that can be wrong with the recipe, the data or the backbone before the run
directory is created, so bad input writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time

import keras
import numpy as np

from retail_vision import backbone_layers, calibration, run_directory
from retail_vision.classifier import build_classifier, class_directions, get_backbone, store_class_means
from retail_vision.console import log
from retail_vision.data import pipeline
from retail_vision.data.training_data import shard_size
from retail_vision.planning import CACHE_FOLDER, Plan, plan
from retail_vision.recipe import Recipe
from retail_vision.rejection import Rejection, fit_rejection
from retail_vision.training import checkpointing, distribution, feature_cache, multi_worker, phases
from retail_vision.training.augment import build_augmenter, build_mixer
from retail_vision.training.freezing import BackboneFreezer


@dataclasses.dataclass
class RunResult:
    run_dir: str | None  # None on a multi-worker run's non-chief workers, which keep nothing
    model: keras.Model
    metrics: dict
    history: dict
    labels: list[str]
    resize: str = "crop"
    rejection: Rejection | None = None

    @property
    def predictor(self):
        """The trained model as `evaluate`, `predict` and `export_model` take it, with its labels and rejection."""
        from retail_vision.artifacts import KerasPredictor

        return KerasPredictor(self.model, self.labels, self.resize, self.rejection)


def fit(recipe: Recipe, runs_dir: str | None = None, verbose: int | None = None,
        resume: bool | str = False) -> RunResult:
    """Train a classifier as the recipe says and write its run directory.

    `resume`: True continues the latest unfinished run of this recipe from its last completed
    epoch, a run directory continues that run (a finished run is returned as it is, never retrained).
    `verbose`: Keras progress (0 silent, 1 bar, 2 a line per epoch); default: a bar on a terminal.
    """
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    runs_dir = runs_dir or recipe.output.runs_dir
    run_dir = None
    if resume:
        run_dir = run_directory.find_resumable(runs_dir, recipe, resume if isinstance(resume, str) else None)
    if run_dir and run_directory.is_finished(run_dir):
        log(f"{run_dir} already finished; nothing to resume")
        return _finished_result(run_dir)
    # First TensorFlow work: a multi-worker strategy must configure collectives before anything runs.
    cluster = distribution.make(recipe.distribute)
    log(f"scanning data: {recipe.data.source}")
    the_plan = plan(recipe, cluster.replicas, output=run_dir or runs_dir)
    for line in the_plan.describe():
        log(line)
    with _process_settings(recipe.train):
        if cluster.is_chief:
            return _fit_and_finish(the_plan, run_dir, runs_dir, cluster, verbose)
        # The other workers train in step with the chief but keep nothing (the tf.distribute convention).
        with tempfile.TemporaryDirectory(prefix="retail-vision-worker-") as scratch:
            copy = _copy_checkpoints(run_dir, scratch) if run_dir else None
            result = _fit_and_finish(the_plan, copy, scratch, cluster, verbose)
        return dataclasses.replace(result, run_dir=None)


@contextlib.contextmanager
def _process_settings(train_config):
    """The seeds and the precision policy of this fit, put back afterwards.

    A second `fit` in the same notebook then starts from the user's settings, not this one's.
    Op determinism, once on, stays on (TensorFlow has no public switch to turn it off), and so
    does the seed that its random ops then require.
    """
    import tensorflow as tf

    policy = keras.mixed_precision.global_policy()
    python_state, numpy_state, tf_seed = random.getstate(), np.random.get_state(), tf.compat.v1.get_seed(None)[0]
    keras.utils.set_random_seed(train_config.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if _use_mixed_precision(train_config) else "float32")
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if not train_config.deterministic:  # with determinism on, every random op needs a seed: keep this one
            tf.random.set_seed(tf_seed)


def _copy_checkpoints(run_dir: str, scratch: str) -> str:
    """A run directory in `scratch` holding `run_dir`'s checkpoints: a non-chief resumes from it, writing nothing there.

    The chief writes its checkpoints only at the end of an epoch, which needs this worker's steps:
    the copy is made before them, so it is the state that the chief resumes from too.
    """
    copy = os.path.join(scratch, os.path.basename(run_dir))
    shutil.copytree(os.path.join(run_dir, checkpointing.CHECKPOINTS), os.path.join(copy, checkpointing.CHECKPOINTS))
    return copy


def _fit_and_finish(the_plan: Plan, run_dir, runs_dir, cluster, verbose) -> RunResult:
    """Train; then write the report, export (the chief only) and write metrics.json."""
    result = _train(the_plan, run_dir, runs_dir, cluster, verbose)
    recipe = the_plan.recipe
    # Out of the strategy's scope: these load the saved model anew, and creating variables under a
    # multi-worker strategy is a collective that the other workers would never join.
    if cluster.is_chief:
        _write_reports(the_plan, result)
    if recipe.export.enabled and cluster.is_chief:
        from retail_vision.export import export_model

        # The rest of the recipe's export section (and its seed) is read back from the run's recipe.
        exported = export_model(result.run_dir, tflite_kinds=tuple(recipe.export.tflite))
        result.metrics["export"] = exported.version_dir
    run_directory.write_json(result.run_dir, run_directory.METRICS_FILE, result.metrics)  # last: marks the run finished
    metrics = result.metrics
    log(f"val top-1 {metrics['val_top1']:.4f} (top-5 {metrics['val_top5']:.4f}) at the best epoch, "
        f"{metrics['best_epoch']} of {len(result.history.get('phase', []))}; the last epoch scored "
        f"{metrics['val_top1_last_epoch']:.4f}. The best epoch was chosen on these validation photos, "
        "so its score is optimistic: score photos nothing was tuned on with retail-vision evaluate")
    log(f"model: {result.run_dir}/{run_directory.MODEL_FILE}")
    if the_plan.data.validation is not None:
        log(f"report: {result.run_dir}/{run_directory.REPORT_FOLDER}/report.md")
    if "test_top1" in metrics:
        log(f"test top-1 {metrics['test_top1']:.4f} (top-5 {metrics['test_top5']:.4f}) on {metrics['test_images']} "
            f"photos nothing was tuned on: {result.run_dir}/{run_directory.TEST_REPORT_FOLDER}/report.md")
    return result


def _write_reports(the_plan: Plan, result: RunResult) -> None:
    """The validation report; and the test photos, scored once, here: nothing was tuned on them."""
    from retail_vision.evaluation.evaluator import evaluate

    if the_plan.data.validation is not None:  # TFDS sources have no files to report on
        calibrated = result.metrics["calibration"]
        evaluate(result.run_dir, report_dir=os.path.join(result.run_dir, run_directory.REPORT_FOLDER),
                 temperature=calibrated["temperature"] if calibrated else None)
    if the_plan.data.test is not None:
        tested = evaluate(result.run_dir, the_plan.data.test,
                          report_dir=os.path.join(result.run_dir, run_directory.TEST_REPORT_FOLDER))
        result.metrics.update(test_top1=tested["top1"], test_top5=tested["top5"], test_images=tested["images"])


def _train(the_plan: Plan, run_dir, runs_dir, cluster, verbose) -> RunResult:
    """The two phases, as in the keras.io transfer-learning guide, then the best model saved in `run_dir`."""
    recipe, data, train = the_plan.recipe, the_plan.data, the_plan.recipe.train
    with cluster.scope():  # every variable is created under the strategy
        classifier = build_classifier(recipe.model.backbone, len(data.class_names), recipe.model.weights,
                                      recipe.model.dropout, the_plan.image_size, name=_model_name(recipe.name),
                                      head=recipe.model.head)
        augmenter = build_augmenter(recipe.augment, train.seed)
    mixer = build_mixer(recipe.augment, train.seed)
    if run_dir is None:
        run_dir = run_directory.create(runs_dir, recipe.name, {
            run_directory.RECIPE_FILE: recipe.to_yaml(),
            run_directory.LABELS_FILE: "\n".join(data.class_names) + "\n",
            run_directory.SPLIT_FILE: run_directory.split_json(data)})
    log(f"run directory: {run_dir}")
    state = checkpointing.RunState(run_dir)
    train_ds, val_ds = data.datasets(the_plan.image_size, recipe.data.resize, train.batch_size, train.seed,
                                     the_plan.image_cache)
    freezer = BackboneFreezer(get_backbone(classifier))
    model_class = multi_worker.TrainingModel if recipe.distribute.strategy == "multi_worker" else keras.Model
    models = _ModelBuilder(cluster, recipe.distribute.strategy)
    cache = _LazyCache(the_plan, classifier, augmenter, mixer, train_ds, val_ds, cluster, models, run_dir)
    runner = phases.PhaseRunner(classifier, state, train, run_dir, verbose, data.train_count)

    if "head" in state.phases_done:
        classifier.load_weights(state.path(checkpointing.AFTER_HEAD_WEIGHTS))
    for phase in the_plan.phases:
        if phase.name in state.phases_done:
            continue
        if phase.name == "head":
            freezer.freeze()
        else:
            freezer.unfreeze(the_plan.unfreeze_index, train.fine_tune.batchnorm)
        # A fresh training model per phase: nothing one phase's fit leaves on its model reaches the next.
        if phase.cached:
            model, train_data, val_data, class_weight = cache.phase_inputs(phase, model_class)
        else:
            model = models.build(lambda: phases.with_augmentation(classifier, augmenter, model_class))
            train_data, val_data, class_weight = _for_replicas(_mixed(train_ds, phase, mixer), val_ds, the_plan)
        with cluster.scope():
            phases.compile_for(model, phase, train, len(data.class_names))
            runner.run(phase, model, train_data, val_data, class_weight)
        if phase.name == "head":
            checkpointing.save_weights(classifier, state.path(checkpointing.AFTER_HEAD_WEIGHTS))
        state.phases_done.append(phase.name)
        state.save()

    # Gigabytes of cached activations (in the cache and in the last phase's datasets) are not held
    # while the best model is scored, saved and reported on.
    cache_summary = cache.summary
    cache.close()
    cache = model = train_data = val_data = None

    # === The best classifier, saved without augmentation ===
    freezer.restore()
    checkpointing.restore_best(classifier, state)
    started = time.perf_counter()
    if store_class_means(classifier, train_ds):  # what enrolled classes are told apart from (enrollment.py)
        log(f"class means of the {data.train_count} training photos ({time.perf_counter() - started:.0f} s)")
    calibrated = calibration.calibrate(classifier, val_ds) if train.calibrate else None
    if calibrated:
        log(f"calibrated on the validation photos: temperature {calibrated.temperature:.2f}, expected "
            f"calibration error {calibrated.ece_before:.3f} -> {calibrated.ece_after:.3f}")
    rejection = _fit_rejection(classifier, val_ds, recipe.rejection)
    rejection.write(run_dir)
    final = phases.score(models.build(lambda: phases.with_augmentation(classifier, None, model_class)),
                         _for_replicas(train_ds, val_ds, the_plan)[1], len(data.class_names), cluster)
    _save_model(classifier, run_dir)
    metrics = {
        "val_top1": final["accuracy"],
        "val_top5": final["top5"],
        "best_epoch": state.best_epoch,
        "val_top1_last_epoch": state.history["val_accuracy"][-1],
        "calibration": calibrated.as_metrics() if calibrated else None,  # fitted on val: its ECE is optimistic
        "rejection": dataclasses.asdict(rejection),
        "phases": state.summaries,
        "classes": len(data.class_names),
        "train_images": data.train_count,
        "val_images": data.validation_count,
        "skipped_files": [dataclasses.asdict(s) for s in data.skipped],
        "image_size": the_plan.image_size,
        "backbone": recipe.model.backbone,
        "activation_cache": cache_summary,  # None when no phase ran on cached activations in this process
        "plan_notes": list(the_plan.notes),  # e.g. why a phase trained without the cache
        "distribute": the_plan.distribute_summary,
    }
    run_directory.write_json(run_dir, run_directory.HISTORY_FILE, state.history)
    return RunResult(run_dir, classifier, metrics, state.history, list(data.class_names), recipe.data.resize,
                     rejection)


def _fit_rejection(classifier, val_ds, config) -> Rejection:
    """The unknown-product threshold, set on the validation photos (all of known products)."""
    from retail_vision.artifacts import KerasPredictor

    predictor = KerasPredictor(classifier, [])
    rejection = fit_rejection((predictor.outputs(images) for images, _ in val_ds), class_directions(classifier),
                              config.score, config.keep_known)
    log(f"unknown products: {config.score} below {rejection.threshold:.4g} (keeps {config.keep_known:.0%} of "
        f"the {rejection.images} validation photos; top probability below {rejection.probability_threshold:.3f} "
        "for clients of the probabilities)")
    return rejection


def _mixed(train_ds, phase, mixer):
    """The phase's training batches, pairs of examples mixed (`augment.mix`) in the fine-tune phase only:
    the head phase of a partial unfreeze trains on pooled features, which have no grid to cut.
    One batch at a time: the mixer draws from one seed generator, in batch order (train.deterministic)."""
    if mixer is None or phase.name != "fine_tune":
        return train_ds
    return train_ds.map(mixer)


def _for_replicas(train_ds, val_ds, the_plan: Plan):
    """(train, val, class weights for fit): batches that give every replica a row, under a strategy."""
    if the_plan.replicas == 1:
        return train_ds, val_ds, the_plan.class_weight
    pad = pipeline.at_least_one_row_per_replica
    return pad(train_ds, the_plan.replicas, the_plan.class_weight), pad(val_ds, the_plan.replicas), None


class _ModelBuilder:
    """Builds each training model inside the strategy's scope, except under multi_worker: outside it
    (multi_worker.py says why). Either way it is compiled and fitted inside the scope."""

    def __init__(self, cluster, strategy: str):
        self.cluster, self.outside = cluster, strategy == "multi_worker"

    def build(self, make):
        if self.outside:
            return make()
        with self.cluster.scope():
            return make()


class _LazyCache:
    """The frozen layers' activations, computed on first use, and the models that train on them.

    With several workers each caches its own shard of the training photos (every W-th, from its
    place among them) and trains on it alone, instead of every worker caching every photo; each
    still caches every validation photo, which the strategy splits as it does uncached batches.
    """

    def __init__(self, the_plan: Plan, classifier, augmenter, mixer, train_ds, val_ds, cluster,
                 models: _ModelBuilder, run_dir: str):
        self.plan, self.classifier, self.augmenter, self.mixer = the_plan, classifier, augmenter, mixer
        self.val_ds, self.cluster, self.models = val_ds, cluster, models
        self.shard = (cluster.worker, cluster.workers) if cluster.workers > 1 else None
        self.train_ds, self.train_count = train_ds, the_plan.data.train_count
        if self.shard:
            recipe = the_plan.recipe
            self.train_ds = the_plan.data.datasets(the_plan.image_size, recipe.data.resize, recipe.train.batch_size,
                                                   recipe.train.seed, the_plan.image_cache, shard=self.shard)[0]
            self.train_count = shard_size(the_plan.data.train_count, *self.shard)
        # On disk: files a killed attempt finished are reused on --resume; the folder goes when training is done.
        self.run_dir = run_dir
        self.folder = None
        if the_plan.cache_storage == "disk":
            self.folder = os.path.join(run_dir, CACHE_FOLDER)
            if self.shard:  # a resumed run on another number of workers caches its shards anew
                self.folder = os.path.join(self.folder, "shard-" + self.shard_name.replace(" ", "-"))
        self.cut = None
        if the_plan.cache_cut is not None:
            self.cut = backbone_layers.fine_tune_cut(get_backbone(classifier), the_plan.cache_cut)
        self.activations = None

    @property
    def shard_name(self) -> str | None:
        return f"{self.shard[0] + 1} of {self.shard[1]}" if self.shard else None

    @property
    def summary(self) -> dict | None:
        if self.activations is None:
            return None
        return {**self.activations.summary, "train_images": self.train_count, "shard": self.shard_name}

    def close(self) -> None:
        """Let go of the cache and delete its files, if any."""
        if self.activations is not None:
            self.activations.close()
            self.activations = None
        shutil.rmtree(os.path.join(self.run_dir, CACHE_FOLDER), ignore_errors=True)

    def phase_inputs(self, phase, model_class):
        """(training model, train dataset, val dataset, class weights for fit) of a cached phase."""
        batch_size, seed = self.plan.recipe.train.batch_size, self.plan.recipe.train.seed
        if self.activations is None:
            where = "pooled features" if self.cut is None else f"the input of {self.plan.unfreeze_layer}"
            whose = f"the {self.train_count} training photos of shard {self.shard_name}, " if self.shard else ""
            log(f"caching the frozen layers' output: {where}, {whose}{self.plan.views} view(s) per image, "
                + (f"in {self.folder}" if self.folder else "in memory"))
            counts = (self.train_count, self.plan.data.validation_count)
            with self.cluster.scope():
                self.activations = feature_cache.FrozenActivations(
                    self.classifier, self.cut, self.train_ds, self.val_ds, self.augmenter, self.plan.views, counts,
                    self.folder, log)
        shard = None
        if self.shard:  # each replica's batches from this worker's shard; every worker takes the phase's steps
            shard = feature_cache.ShardBatches(batch_size // self.plan.replicas,
                                               phase.steps_per_epoch * batch_size // self.shard[1])
        with self.cluster.scope():
            if phase.name == "head":
                train_data, val_data = self.activations.head_datasets(batch_size, seed, shard)
            else:
                train_data, val_data = self.activations.fine_tune_datasets(batch_size, seed, shard)
            train_data = _mixed(train_data, phase, self.mixer)
        if phase.name == "head":
            model = self.models.build(lambda: feature_cache.head_model(self.classifier, model_class))
        else:
            model = self.models.build(lambda: feature_cache.top_model(self.classifier, self.cut, model_class))
        if not self.shard:
            return (model, *_for_replicas(train_data, val_data, self.plan))
        # Class weights go into the batches (every one has rows: no padding needed); the strategy
        # takes each worker's batches as they are, without sharding or re-batching them.
        weighted = pipeline.at_least_one_row_per_replica(train_data, 1, self.plan.class_weight)
        train_data = self.cluster.strategy.distribute_datasets_from_function(
            lambda context: self._own_shard(context, weighted))
        return model, train_data, pipeline.at_least_one_row_per_replica(val_data, self.plan.replicas), None

    def _own_shard(self, context, dataset):
        if (context.input_pipeline_id, context.num_input_pipelines) != self.shard:
            raise RuntimeError(f"tf.distribute gave this worker input pipeline {context.input_pipeline_id} of "
                               f"{context.num_input_pipelines}; its cache holds shard {self.shard[0]} of {self.shard[1]}")
        return dataset


def _save_model(classifier, run_dir: str) -> None:
    """model.keras through a temporary name (Keras writes the zip in place). Never compiled: no optimizer inside."""
    temporary = os.path.join(run_dir, "model.tmp.keras")
    classifier.save(temporary)
    os.replace(temporary, os.path.join(run_dir, run_directory.MODEL_FILE))


def _use_mixed_precision(train_config) -> bool:
    if train_config.mixed_precision != "auto":
        return train_config.mixed_precision
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _finished_result(run_dir: str) -> RunResult:
    from retail_vision.artifacts import load_model, resize_mode

    model, labels = load_model(run_dir)
    with open(f"{run_dir}/{run_directory.METRICS_FILE}", encoding="utf-8") as handle:
        metrics = json.load(handle)
    with open(f"{run_dir}/{run_directory.HISTORY_FILE}", encoding="utf-8") as handle:
        history = json.load(handle)
    return RunResult(run_dir, model, metrics, history, labels, resize_mode(run_dir), Rejection.read(run_dir))


def _model_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "classifier"

