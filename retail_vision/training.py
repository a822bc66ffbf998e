"""The two-phase fit: train the head on the frozen backbone, then fine-tune the backbone's top.

`fit(recipe)` is what `retail-vision fit` runs. Everything that can be wrong with the recipe,
the data or the weights is found before the run directory is created, so bad input writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

import keras

from retail_vision import backbones, checkpointing, distribution, feature_cache, multi_worker, run_directory
from retail_vision.augment import build_augmenter
from retail_vision.classifier import build_classifier, get_backbone
from retail_vision.data.training_data import TrainingData, resolve_training_data
from retail_vision.errors import RecipeError
from retail_vision.freezing import BackboneFreezer, first_trainable_index
from retail_vision.recipe import Recipe


@dataclasses.dataclass
class RunResult:
    run_dir: str | None  # None on a multi-worker run's non-chief workers, which keep nothing
    model: keras.Model
    metrics: dict
    history: dict


def fit(recipe: Recipe, runs_dir: str | None = None, verbose: int | None = None, resume: bool = False) -> RunResult:
    """Train a classifier as the recipe says and write its run directory.

    `resume`: continue the latest unfinished run of this recipe from its last completed epoch
    (a finished run is returned as it is, never retrained).
    `verbose`: Keras progress (0 silent, 1 bar, 2 a line per epoch); default: a bar on a terminal.
    """
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    train_config = recipe.train
    runs_dir = runs_dir or recipe.output.runs_dir
    if train_config.head.epochs == 0 and train_config.fine_tune.epochs == 0:
        raise RecipeError("train: head.epochs and fine_tune.epochs are both 0; nothing to train")
    run_dir = run_directory.find_resumable(runs_dir, recipe) if resume else None
    if run_dir and run_directory.is_finished(run_dir):
        _log(f"{run_dir} already finished; nothing to resume")
        return _finished_result(run_dir)
    spec = backbones.get(recipe.model.backbone)
    image_size = recipe.data.image_size or spec.input_size
    _log(f"scanning data: {recipe.data.source}")
    data = resolve_training_data(recipe.data, train_config.seed)
    _log(
        f"{len(data.class_names)} classes, {data.train_count} train / {data.validation_count} val images, "
        f"{len(data.skipped)} skipped"
    )
    for skipped in data.skipped:
        _log(f"  skipped {skipped.path}: {skipped.reason}")
    class_weight = _class_weights(data) if train_config.class_weights == "auto" else None
    _check_settings(recipe, data)

    # First TensorFlow work: a multi-worker strategy must configure collectives before anything runs.
    cluster = distribution.make(recipe.distribute, train_config.batch_size)
    keras.utils.set_random_seed(train_config.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if _use_mixed_precision(train_config) else "float32")
    if train_config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    if cluster.is_chief:
        return _fit_and_finish(recipe, run_dir, runs_dir, spec, image_size, data, class_weight, cluster, verbose)
    # The other workers train in step with the chief but keep nothing (the tf.distribute convention).
    with tempfile.TemporaryDirectory(prefix="retail-vision-worker-") as scratch:
        copy = _copy_checkpoints(run_dir, scratch) if run_dir else None
        result = _fit_and_finish(recipe, copy, scratch, spec, image_size, data, class_weight, cluster, verbose)
    return dataclasses.replace(result, run_dir=None)


def _copy_checkpoints(run_dir: str, scratch: str) -> str:
    """A run directory in `scratch` holding `run_dir`'s checkpoints: a non-chief resumes from it, writing nothing there.

    The chief writes its checkpoints only at the end of an epoch, which needs this worker's steps:
    the copy is made before them, so it is the state that the chief resumes from too.
    """
    copy = os.path.join(scratch, os.path.basename(run_dir))
    shutil.copytree(os.path.join(run_dir, checkpointing.CHECKPOINTS), os.path.join(copy, checkpointing.CHECKPOINTS))
    return copy


def _fit_and_finish(recipe, run_dir, runs_dir, spec, image_size, data, class_weight, cluster, verbose) -> RunResult:
    """Train under the strategy's scope; then export (the chief only) and write metrics.json."""
    with cluster.scope():
        result = _fit_in_scope(recipe, run_dir, runs_dir, spec, image_size, data, class_weight, cluster, verbose)
    # Out of the scope: export loads the model anew, and creating variables under a multi-worker
    # strategy is a collective that the other workers would never join.
    if recipe.export.enabled and cluster.is_chief:
        from retail_vision.export import export_model

        exported = export_model(
            result.run_dir, output=recipe.export.output, tflite_kinds=tuple(recipe.export.tflite),
            max_int8_drop=recipe.export.max_int8_drop, calibration_images=recipe.export.calibration_images,
            seed=recipe.train.seed,
        )
        result.metrics["export"] = exported.version_dir
    run_directory.write_json(result.run_dir, run_directory.METRICS_FILE, result.metrics)  # last: marks the run finished
    return result


def _fit_in_scope(recipe, run_dir, runs_dir, spec, image_size, data, class_weight, cluster, verbose) -> RunResult:
    """Build, train, save: everything that creates variables happens under the strategy's scope."""
    train_config = recipe.train
    classifier = build_classifier(
        recipe.model.backbone, len(data.class_names), recipe.model.weights, recipe.model.dropout, image_size,
        name=_model_name(recipe.name),
    )
    backbone = get_backbone(classifier)
    if train_config.fine_tune.epochs:
        first = first_trainable_index(backbone, train_config.fine_tune.unfreeze)  # a bad layer name fails now
        if recipe.model.weights == "none" and first > 0:
            raise RecipeError(
                f"train.fine_tune.unfreeze: {train_config.fine_tune.unfreeze!r} with model.weights 'none' leaves "
                "the lower layers frozen at random values; use 'all' or pretrained weights"
            )
        if train_config.fine_tune.cache_activations is True:
            _check_cut(backbone, first, train_config.fine_tune.unfreeze)

    if run_dir is None:
        run_dir = run_directory.create(runs_dir, recipe.name)
        run_directory.write_text(run_dir, run_directory.RECIPE_FILE, recipe.to_yaml())
        run_directory.write_text(run_dir, run_directory.LABELS_FILE, "\n".join(data.class_names) + "\n")
    _log(f"run directory: {run_dir}")
    return _train(recipe, run_dir, spec, image_size, data, class_weight, cluster, verbose, classifier)


def _train(recipe, run_dir, spec, image_size, data, class_weight, cluster, verbose, classifier) -> RunResult:
    """The two phases, the best model, the metrics and the report, in `run_dir`."""
    train_config = recipe.train
    backbone = get_backbone(classifier)
    state = checkpointing.RunState(run_dir)

    train_ds, val_ds = data.datasets(
        image_size, recipe.data.resize, train_config.batch_size, train_config.seed, recipe.data.cache,
        cache_folder=f"{run_dir}/cache",
    )
    augmenter = build_augmenter(recipe.augment, train_config.seed)
    model_class = multi_worker.TrainingModel if recipe.distribute.strategy == "multi_worker" else keras.Model
    training_model = _with_augmentation(classifier, augmenter, image_size, model_class)
    steps_per_epoch = math.ceil(data.train_count / train_config.batch_size)
    freezer = BackboneFreezer(backbone)
    phases = _PhaseRunner(classifier, state, train_config, class_weight, run_dir, verbose, data.train_count)
    num_classes = len(data.class_names)

    # === What the frozen layers compute once (feature_cache) ===
    head, fine_tune = train_config.head, train_config.fine_tune
    head_todo = bool(head.epochs) and "head" not in state.phases_done
    fine_tune_todo = bool(fine_tune.epochs) and "fine_tune" not in state.phases_done
    views = head.augmented_views if augmenter else 1
    first = first_trainable_index(backbone, fine_tune.unfreeze)
    cut, cache_head, cache_fine_tune = _caching_plan(recipe, classifier, image_size, data.train_count, views,
                                                     head_todo, fine_tune_todo, first)
    activations = None

    def frozen_activations():
        nonlocal activations
        if activations is None:
            where = "pooled features" if cut is None else f"the input of {backbone.layers[first].name}"
            _log(f"caching the frozen layers' output: {where}, {views} view(s) per image")
            activations = feature_cache.FrozenActivations(classifier, cut, train_ds, val_ds, augmenter, views, _log)
        return activations

    batch = (train_config.batch_size, train_config.seed, data.train_count, model_class)

    # === Phase 1: the head on the frozen backbone ===
    if head_todo:
        freezer.freeze()
        model, head_train, head_val, steps = training_model, train_ds, val_ds, None
        if cache_head:
            model, head_train, head_val, steps = frozen_activations().head_phase(*batch)
        _compile(model, train_config, head.learning_rate * cluster.lr_factor, num_classes)
        phases.run("head", model, head_train, head_val, head.epochs, steps)
        checkpointing.save_weights(classifier, state.path(checkpointing.AFTER_HEAD_WEIGHTS))
        state.phases_done.append("head")
        state.save()
    elif "head" in state.phases_done:
        classifier.load_weights(state.path(checkpointing.AFTER_HEAD_WEIGHTS))

    # === Phase 2: fine-tune the top of the backbone at a low learning rate ===
    if fine_tune_todo:
        freezer.unfreeze(fine_tune.unfreeze, fine_tune.batchnorm)
        _log(
            f"fine-tune: backbone layers {first}..{len(backbone.layers) - 1} trainable, "
            f"BatchNorm {fine_tune.batchnorm}" + (", on cached activations" if cache_fine_tune else "")
        )
        model, ft_train, ft_val, steps = training_model, train_ds, val_ds, None
        if cache_fine_tune:
            model, ft_train, ft_val, steps = frozen_activations().fine_tune_phase(*batch)
        schedule = warmup_cosine(fine_tune.learning_rate * cluster.lr_factor, fine_tune.epochs * steps_per_epoch,
                                 round(fine_tune.warmup_epochs * steps_per_epoch))
        _compile(model, train_config, schedule, num_classes)
        phases.run("fine_tune", model, ft_train, ft_val, fine_tune.epochs, steps)
        state.phases_done.append("fine_tune")
        state.save()
    cache_summary = activations.summary if activations is not None else None
    activations = None  # the cached arrays are not needed past the phases

    # === The best classifier, saved without augmentation ===
    freezer.restore()
    checkpointing.restore_best(classifier, state)
    training_model.compile(loss="categorical_crossentropy", metrics=_metrics(num_classes))  # evaluation only
    final = training_model.evaluate(val_ds, verbose=0, return_dict=True)
    classifier.save(f"{run_dir}/{run_directory.MODEL_FILE}")  # never compiled itself: no optimizer inside
    metrics = {
        "val_top1": float(final["accuracy"]),
        "val_top5": float(final["top5"]),
        "best_epoch": state.best_epoch,
        "phases": state.summaries,
        "classes": len(data.class_names),
        "train_images": data.train_count,
        "val_images": data.validation_count,
        "skipped_files": [dataclasses.asdict(s) for s in data.skipped],
        "image_size": image_size,
        "backbone": recipe.model.backbone,
        "activation_cache": cache_summary,  # None when no phase ran on cached activations in this process
        "distribute": cluster.describe(recipe.distribute.strategy, train_config.batch_size,
                                       recipe.distribute.lr_scaling),
    }
    run_directory.write_json(run_dir, run_directory.HISTORY_FILE, state.history)
    if data.validation is not None:  # TFDS sources have no files to report on
        from retail_vision.evaluation.evaluator import write_run_report

        write_run_report(run_dir, classifier, data.class_names, data.validation, recipe.data.resize)
    _log(f"val top-1 {metrics['val_top1']:.4f}, top-5 {metrics['val_top5']:.4f}; model: {run_dir}/model.keras")
    shutil.rmtree(f"{run_dir}/cache", ignore_errors=True)  # a file cache of the images, when they did not fit
    return RunResult(run_dir, classifier, metrics, state.history)


def _check_cut(backbone, first: int, unfreeze) -> None:
    """`cache_activations: true` needs frozen layers below the unfrozen top, cut at a block boundary."""
    if feature_cache.fine_tune_cut(backbone, first) is not None:
        return
    field = "train.fine_tune.cache_activations: true"
    if unfreeze == "all":
        raise RecipeError(f"{field} needs frozen layers to cache, and unfreeze is 'all'; "
                          "set train.fine_tune.unfreeze to a layer name such as a block's first layer")
    raise RecipeError(f"{field}: the unfrozen top must start where nothing below is needed again, and "
                      f"{backbone.layers[first].name!r} is inside a block (a residual connection crosses it); "
                      f"set train.fine_tune.unfreeze to a block boundary such as {_nearest_cuts(backbone, first)}")


def _nearest_cuts(backbone, first: int) -> str:
    """The block boundaries just below and above layer `first`, quoted, for messages."""
    names = [layer.name for layer in backbone.layers]
    cuts = feature_cache.clean_cut_names(backbone)
    below = [name for name in cuts if names.index(name) < first][-1:]
    above = [name for name in cuts if names.index(name) > first][:1]
    return ", ".join(repr(name) for name in below + above)


def _caching_plan(recipe, classifier, image_size, train_count, views, head_todo, fine_tune_todo, first):
    """(cut, cache the head phase?, cache the fine-tune phase?) from the recipe and the memory budget.

    `cut` is where the cached activations are taken: None for pooled features (head only), or
    the input of the first unfrozen layer when the fine-tune phase caches too (the head then
    uses the same activations).
    """
    head, fine_tune = recipe.train.head, recipe.train.fine_tune
    strategy = recipe.distribute.strategy
    backbone = get_backbone(classifier)
    cut = None
    if fine_tune_todo:
        cut = feature_cache.fine_tune_cut(backbone, first)
        if cut is None and first > 0 and fine_tune.cache_activations == "auto":
            _log(f"fine-tune: not cached, {backbone.layers[first].name!r} is inside a block; unfreeze from a block "
                 f"boundary such as {_nearest_cuts(backbone, first)} to train the top on cached activations")
    cache_fine_tune = cut is not None and feature_cache.should_cache(
        fine_tune.cache_activations,
        views * train_count * feature_cache.bytes_per_view(feature_cache.bottom_model(classifier, cut), image_size,
                                                            "float16"),
        strategy,
    )
    if cache_fine_tune:  # the head's features then come from the same activations, at no extra memory
        return cut, head_todo and head.cache_features is not False, True
    feature_bytes = views * train_count * backbones.get(recipe.model.backbone).feature_dim * 4
    return None, head_todo and feature_cache.should_cache(head.cache_features, feature_bytes, strategy), False


def _use_mixed_precision(train_config) -> bool:
    if train_config.mixed_precision != "auto":
        return train_config.mixed_precision
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _check_settings(recipe: Recipe, data: TrainingData) -> None:
    """Settings that are valid one by one but contradict each other or the data."""
    if recipe.train.batch_size > data.train_count:
        raise RecipeError(
            f"train.batch_size: {recipe.train.batch_size} is more than the {data.train_count} training images; "
            f"use at most {data.train_count}"
        )
    if recipe.train.head.cache_features is True and recipe.distribute.strategy not in feature_cache.STRATEGIES:
        raise RecipeError(
            f"train.head.cache_features: true is not supported with distribute.strategy "
            f"{recipe.distribute.strategy!r}; use 'auto' (off there) or false"
        )
    if recipe.train.fine_tune.cache_activations is True and recipe.distribute.strategy not in feature_cache.STRATEGIES:
        raise RecipeError(
            f"train.fine_tune.cache_activations: true is not supported with distribute.strategy "
            f"{recipe.distribute.strategy!r}; use 'auto' (off there) or false"
        )
    if recipe.export.enabled and "int8" in recipe.export.tflite and data.train is None:
        raise RecipeError(
            "export.tflite: int8 calibrates on training image files, and a TFDS source has none; "
            "drop int8 or export later with: retail-vision export RUN --quantize int8 --data FOLDER"
        )


def _finished_result(run_dir: str) -> RunResult:
    from retail_vision.artifacts import load_model

    model, _ = load_model(run_dir)
    with open(f"{run_dir}/{run_directory.METRICS_FILE}", encoding="utf-8") as handle:
        metrics = json.load(handle)
    with open(f"{run_dir}/{run_directory.HISTORY_FILE}", encoding="utf-8") as handle:
        history = json.load(handle)
    return RunResult(run_dir, model, metrics, history)


class _PhaseRunner:
    """Runs one phase's `fit` with the shared callbacks, resumable from its last completed epoch."""

    def __init__(self, classifier, state, train_config, class_weight, run_dir, verbose, train_count):
        self.classifier = classifier
        self.state = state
        self.train_config = train_config
        self.class_weight = class_weight
        self.run_dir = run_dir
        self.verbose = verbose
        self.train_count = train_count

    def run(self, name, model, train_ds, val_ds, epochs, steps_per_epoch=None) -> None:
        done_before = self.state.phase_epochs(name)
        _log(f"phase {name}: {epochs} epochs" + (f" (resuming after epoch {done_before})" if done_before else ""))
        recorder = checkpointing.EpochRecorder(self.classifier, self.state, name)
        callbacks = [
            # Backup first, then the state: a kill between the two repeats no epoch.
            keras.callbacks.BackupAndRestore(self.state.backup_dir(name)),
            recorder,
            keras.callbacks.TensorBoard(f"{self.run_dir}/logs/{name}", write_graph=False, profile_batch=0),
        ]
        patience = self.train_config.early_stopping.patience
        if patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience, restore_best_weights=True)
            )
        first_epoch = self.state.epochs_done - done_before
        started = time.perf_counter()
        model.fit(
            train_ds, validation_data=val_ds, initial_epoch=first_epoch, epochs=first_epoch + epochs,
            steps_per_epoch=steps_per_epoch, class_weight=self.class_weight, callbacks=callbacks,
            verbose=self.verbose,
            shuffle=False,  # the tf.data pipeline already shuffles, seeded
        )
        # A restoring BackupAndRestore leaves its epoch on the model, and the next phase's fit on the
        # same model would start from it instead of `initial_epoch` (Keras 3.15 trainer.fit).
        model._initial_epoch = None
        wall = time.perf_counter() - started
        phase = [i for i, p in enumerate(self.state.history["phase"]) if p == name]
        ran_now = len(recorder.epoch_seconds)
        val_top1 = [self.state.history["val_accuracy"][i] for i in phase]
        self.state.summaries[name] = {
            "epochs": len(phase),
            "val_top1": val_top1[-1],
            "val_top5": self.state.history["val_top5"][phase[-1]],
            "best_val_top1": max(val_top1),
            "wall_s": round(wall, 2) + self.state.summaries.get(name, {}).get("wall_s", 0.0),
            "epoch_s": [round(s, 2) for s in recorder.epoch_seconds],
            "train_s": [round(s, 2) for s in recorder.train_seconds],  # per epoch, without validation
            "images_per_s": round(self.train_count * ran_now / wall, 1) if ran_now else None,
        }
        self.state.save()


def _with_augmentation(classifier: keras.Model, augmenter, image_size: int, model_class=keras.Model) -> keras.Model:
    """The model that `fit` trains: augmentation (active only in training) in front of the classifier.

    The classifier is wrapped even without augmentation, so it is never compiled itself and
    its saved file carries no optimizer state. `model_class`: multi_worker.TrainingModel under `multi_worker`.
    """
    images = keras.Input(shape=(image_size, image_size, 3), name="image")
    augmented = augmenter(images) if augmenter is not None else images
    return model_class(images, classifier(augmented), name="training_model")


def _compile(model, train_config, learning_rate, num_classes: int) -> None:
    model.compile(
        optimizer=_optimizer(train_config, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_config.label_smoothing),
        metrics=_metrics(num_classes),
    )


def _metrics(num_classes: int) -> list:
    return ["accuracy", keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5")]


def _optimizer(train_config, learning_rate):
    if train_config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=train_config.weight_decay)
    if train_config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(learning_rate)


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int):
    """Linear warmup from 0 to `peak`, then cosine decay to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total_steps - warmup_steps, 1), warmup_target=peak, warmup_steps=warmup_steps
    )


def _class_weights(data: TrainingData) -> dict[int, float]:
    """Inverse class frequency, scaled so that the average weight per image is 1."""
    counts = data.train_class_counts()
    if not counts:
        raise RecipeError("train.class_weights: 'auto' needs a folder or manifest source; use 'none' for TFDS")
    total, k = sum(counts.values()), len(counts)
    return {i: total / (k * max(count, 1)) for i, count in enumerate(counts.values())}


def _model_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "classifier"


def _log(message: str) -> None:
    print(f"[retail-vision] {message}", file=sys.stderr, flush=True)
