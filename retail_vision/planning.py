"""`plan(recipe) -> Plan`: a recipe checked and resolved once, before anything trains.

Every check that can be made before training lives here, and every problem found is reported
at once: one `RecipeError` with one line per problem, each named by its dotted path. What the
checks resolve stays on the `Plan`: the backbone, the image size, the data and its split, the
class weights, where the fine-tune starts, what the frozen layers cache, the learning rates
and the steps of each phase. `fit` trains from a plan and `retail-vision check` prints one,
so no verb works a recipe out again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil

from retail_vision import backbones
from retail_vision.data.training_data import TrainingData, resolve_training_data
from retail_vision.errors import DataError, RecipeError, UserError
from retail_vision.recipe import Recipe

# Where training on cached activations is tested; under a TPU strategy `auto` trains uncached.
CACHE_STRATEGIES = ("none", "mirrored", "multi_worker")
# `cache_storage: auto` keeps the cache in memory when it fits this share of the memory available
# when the run starts (the rest is for the model, the image pipeline and the other processes).
MEMORY_SHARE = 0.5
ACTIVATION_BYTES = 2  # activation maps are cached in float16
FEATURE_BYTES = 4  # pooled features stay float32
CACHE_FOLDER = "activations"  # in the run directory, when the cache is on disk


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase as the plan resolved it."""

    name: str  # "head" or "fine_tune"
    epochs: int
    learning_rate: float  # constant (head) or the peak after warmup (fine-tune), scaled for the replicas
    warmup_steps: int  # fine-tune only: linear warmup from 0, then cosine decay to 0
    steps_per_epoch: int
    cached: bool  # trains on activations the frozen layers computed once


@dataclasses.dataclass(frozen=True)
class Plan:
    recipe: Recipe
    backbone: backbones.BackboneSpec
    image_size: int
    data: TrainingData
    class_weight: dict[int, float] | None
    views: int  # augmented views per image in the activation cache (1 without augmentation)
    unfreeze_index: int  # first trainable backbone layer of the fine-tune (0: all)
    unfreeze_layer: str  # its name, for messages
    backbone_layer_count: int
    cache_cut: int | None  # the fine-tune caches the input of this backbone layer; None: pooled features
    cache_bytes: int  # what the activation cache takes, in memory or on disk (0 when nothing is cached)
    cache_storage: str | None  # "memory", "disk" (files in the run directory), None when nothing is cached
    memory_budget: int  # bytes the caches may take in memory (`auto` goes to disk above it)
    image_cache: bool  # decoded images stay in memory after the first epoch (else decoded every epoch)
    image_bytes: int  # what they take as uint8 pixels, cached or not
    replicas: int
    lr_factor: float
    phases: tuple[Phase, ...]  # the phases with epochs to train, in order
    notes: tuple[str, ...]  # worth saying, not errors

    @property
    def distribute_summary(self) -> dict:
        batch = self.recipe.train.batch_size
        return {"strategy": self.recipe.distribute.strategy, "replicas": self.replicas, "global_batch": batch,
                "per_replica_batch": batch // self.replicas, "lr_scaling": self.recipe.distribute.lr_scaling,
                "lr_factor": self.lr_factor}

    def describe(self) -> list[str]:
        """What would be trained, how and on what: the lines `retail-vision check` prints."""
        recipe, data = self.recipe, self.data
        lines = [
            f"backbone:   {self.backbone.name}, {self.image_size} px, weights {recipe.model.weights}",
            f"head:       {recipe.model.head}; unknown products: {recipe.rejection.score} below the level that keeps "
            f"{recipe.rejection.keep_known:.0%} of the validation photos",
            f"classes:    {len(data.class_names)}",
            f"train:      {_count(data.train_count, 'image')}",
            f"validation: {_count(data.validation_count, 'image')}",
            *([f"test:       {_count(len(data.test), 'image')} (scored once at the end, never tuned on)"]
              if data.test is not None else []),
            f"skipped:    {_count(len(data.skipped), 'file')}",
        ]
        lines += [f"  {skipped.path}: {skipped.reason}" for skipped in data.skipped]
        counts = data.train_class_counts()
        if counts:
            smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
            lines.append(f"per class:  {counts[smallest]} ({smallest}) to {counts[largest]} ({largest}) train images"
                         if counts[smallest] != counts[largest] else f"per class:  {counts[smallest]} train images")
        if self.class_weight:
            lines.append("class weights: inverse class frequency")
        for phase in self.phases:
            lines.append(f"phase {phase.name}: {_count(phase.epochs, 'epoch')} of {phase.steps_per_epoch} steps "
                         f"(batch {recipe.train.batch_size}), learning rate {phase.learning_rate:g}"
                         + (f" after {phase.warmup_steps} warmup steps" if phase.warmup_steps else "")
                         + (", on cached activations" if phase.cached else ""))
            if phase.name == "fine_tune":
                layers = (f"backbone layers {self.unfreeze_index}..{self.backbone_layer_count - 1} "
                          f"(from {self.unfreeze_layer!r})" if self.unfreeze_index else "all backbone layers")
                lines.append(f"  trainable: {layers}, BatchNorm {recipe.train.fine_tune.batchnorm}"
                             + (f", batches mixed by {recipe.augment.mixing}" if recipe.augment.mixing else ""))
        if self.cache_bytes:
            where = "pooled features" if self.cache_cut is None else f"the input of {self.unfreeze_layer!r}"
            storage = ("in memory" if self.cache_storage == "memory" else
                       f"on disk in the run directory ({CACHE_FOLDER}/, deleted at the end)")
            lines.append(f"cache:      {where}, {_count(self.views, 'view')} per image, "
                         f"{_size(self.cache_bytes)} {storage}; memory budget {_size(self.memory_budget)}")
        if self.image_bytes:
            why_not = ("data.cache is false" if not recipe.data.cache else
                       "train.cache_storage is disk" if recipe.train.cache_storage == "disk" else
                       "more than the memory budget leaves")
            lines.append(f"images:     {_size(self.image_bytes)} of decoded pixels, "
                         + ("kept in memory after the first epoch" if self.image_cache else
                            f"not kept: decoded again every epoch ({why_not})"))
        if self.replicas > 1:
            lines.append(f"replicas:   {self.replicas} ({recipe.distribute.strategy}), "
                         f"learning rates x{self.lr_factor:g}")
        lines += [f"note:       {note}" for note in self.notes]
        return lines


def plan(recipe: Recipe, replicas: int = 1, output: str | None = None) -> Plan:
    """Check `recipe` against its data and backbone and resolve everything `fit` needs.

    `replicas`: devices the batch is split over (`fit` passes its tf.distribute strategy's).
    `output`: the folder the run's files go to (a runs folder, or the run directory it resumes),
    whose disk must hold an activation cache that does not fit in memory; default: the recipe's runs folder.
    Raises one `UserError` that lists every problem found.
    """
    problems: list[UserError] = []
    train, strategy = recipe.train, recipe.distribute.strategy

    def problem(message: str) -> None:
        problems.append(RecipeError(message))

    if train.head.epochs == 0 and train.fine_tune.epochs == 0:
        problem("train: head.epochs and fine_tune.epochs are both 0; nothing to train")
    for field, value in (("train.head.cache_features", train.head.cache_features),
                         ("train.fine_tune.cache_activations", train.fine_tune.cache_activations)):
        if value is True and strategy not in CACHE_STRATEGIES:
            problem(f"{field}: true is not supported with distribute.strategy {strategy!r}; "
                    "use 'auto' (off there) or false")
    if train.batch_size % replicas:
        problem(f"train.batch_size: {train.batch_size} does not divide over {replicas} replicas; "
                f"use a multiple of {replicas}")

    spec = backbones.get(recipe.model.backbone)
    image_size = recipe.data.image_size or spec.input_size
    data = None
    try:
        data = resolve_training_data(recipe.data, train.seed)
    except DataError as error:
        problems.append(error)
    class_weight = None
    if data is not None:
        if train.batch_size > data.train_count:
            problem(f"train.batch_size: {train.batch_size} is more than the {data.train_count} training images; "
                    f"use at most {data.train_count}")
        if recipe.export.enabled and "int8" in recipe.export.tflite and data.train is None:
            problem("export.tflite: int8 calibrates on training image files, and a TFDS source has none; "
                    "drop int8 or export later with: retail-vision export RUN --quantize int8 --data FOLDER")
        if train.class_weights == "auto":
            if data.train is None:
                problem("train.class_weights: 'auto' needs a folder or manifest source; use 'none' for TFDS")
            else:
                class_weight = _inverse_frequency(data.train_class_counts())

    architecture = _Architecture(recipe, spec, image_size, problem)
    _raise_all(problems, recipe)

    views = train.head.augmented_views if recipe.augment.active else 1
    caching = _Caching(recipe, spec, architecture, views, (data.train_count, data.validation_count), image_size)
    if caching.storage == "disk":
        output = output or recipe.output.runs_dir
        free = _free_bytes(output)
        if caching.nbytes > free:
            problems.append(RecipeError(
                f"train.cache_storage: the activation cache needs {_size(caching.nbytes)} on disk (more than the "
                f"memory budget of {_size(caching.memory_budget)}) and {output} has {_size(free)} free; free some "
                "space, write the run elsewhere (fit --output), or train without the cache "
                "(train.fine_tune.cache_activations: false and train.head.cache_features: false; slower per epoch)"))
            _raise_all(problems, recipe)
    lr_factor = float(replicas) if recipe.distribute.lr_scaling == "linear" else 1.0
    steps = math.ceil(data.train_count / train.batch_size)
    phases = []
    if train.head.epochs:
        phases.append(Phase("head", train.head.epochs, train.head.learning_rate * lr_factor, 0, steps, caching.head))
    if train.fine_tune.epochs:
        warmup = min(round(train.fine_tune.warmup_epochs * steps), max(train.fine_tune.epochs * steps - 1, 0))
        phases.append(Phase("fine_tune", train.fine_tune.epochs, train.fine_tune.learning_rate * lr_factor, warmup,
                            steps, caching.fine_tune))
    return Plan(recipe, spec, image_size, data, class_weight, views, architecture.first, architecture.first_name,
                architecture.layer_count, caching.cut, caching.nbytes, caching.storage, caching.memory_budget,
                caching.image_cache, caching.image_bytes, replicas, lr_factor, tuple(phases), tuple(caching.notes))


class _Architecture:
    """What the recipe's fine-tune means on the backbone's layers, from a weightless copy of it.

    Builds the architecture only when a fine-tune is asked for (TensorFlow is needed for it).
    """

    def __init__(self, recipe: Recipe, spec, image_size: int, problem):
        self.first, self.first_name, self.layer_count = 0, "", 0
        self.cut_exists, self.cut_values, self.nearest_cuts = False, 0, ""
        fine_tune = recipe.train.fine_tune
        if not fine_tune.epochs:
            return
        import keras

        from retail_vision import backbone_layers

        backbone = _weightless(spec)
        self.layer_count = len(backbone.layers)
        try:
            self.first = backbone_layers.first_trainable_index(backbone, fine_tune.unfreeze)
        except RecipeError as error:
            problem(str(error))
            return
        self.first_name = backbone.layers[self.first].name
        if recipe.model.weights == "none" and self.first > 0:
            problem(f"train.fine_tune.unfreeze: {fine_tune.unfreeze!r} with model.weights 'none' leaves "
                    "the lower layers frozen at random values; use 'all' or pretrained weights")
        cut = backbone_layers.fine_tune_cut(backbone, self.first)
        self.cut_exists = cut is not None
        if cut is not None:
            shape = keras.Model(backbone.input, cut).compute_output_shape((1, image_size, image_size, 3))
            self.cut_values = math.prod(shape[1:])
        elif self.first > 0:
            self.nearest_cuts = backbone_layers.nearest_cuts(backbone, self.first)
        if fine_tune.cache_activations is True and cut is None:
            field = "train.fine_tune.cache_activations: true"
            if self.first == 0:
                problem(f"{field} needs frozen layers to cache, and unfreeze is 'all'; "
                        "set train.fine_tune.unfreeze to a layer name such as a block's first layer")
            else:
                problem(f"{field}: the unfrozen top must start where nothing below is needed again, and "
                        f"{self.first_name!r} is inside a block (a residual connection crosses it); "
                        f"set train.fine_tune.unfreeze to a block boundary such as {self.nearest_cuts}")


class _Caching:
    """What is computed once and kept: the frozen layers' output and the decoded images, their sizes and storage.

    A fine-tune from a block boundary caches the input of its first layer, and the head pools its
    features from the same activations; otherwise the head caches pooled features. The activation
    cache is kept in memory when it fits the memory budget (or `cache_storage: memory` says so),
    else on disk; the decoded images stay in memory when they fit what it leaves of the budget.
    """

    def __init__(self, recipe: Recipe, spec, architecture: _Architecture, views: int, counts: tuple[int, int],
                 image_size: int):
        head, fine_tune, strategy = recipe.train.head, recipe.train.fine_tune, recipe.distribute.strategy
        self.cut, self.nbytes, self.fine_tune, self.storage, self.notes = None, 0, False, None, []
        rows = views * counts[0] + counts[1]  # every training view and every validation image
        self.memory_budget = memory_budget()
        if fine_tune.epochs and architecture.cut_exists:
            self.fine_tune = _should_cache(fine_tune.cache_activations, strategy)
            if self.fine_tune:
                self.cut, self.nbytes = architecture.first, rows * architecture.cut_values * ACTIVATION_BYTES
        elif fine_tune.epochs and architecture.first > 0 and fine_tune.cache_activations == "auto":
            self.notes.append(f"fine-tune not cached: {architecture.first_name!r} is inside a block; unfreeze "
                              f"from a block boundary such as {architecture.nearest_cuts} to train the top on "
                              "cached activations")
        feature_bytes = rows * spec.feature_dim * FEATURE_BYTES
        if self.fine_tune:  # the head's features are pooled from the same activations, and kept beside them
            self.head = bool(head.epochs) and head.cache_features is not False
            self.nbytes += feature_bytes if self.head else 0
        else:
            self.head = bool(head.epochs) and _should_cache(head.cache_features, strategy)
            self.nbytes = feature_bytes if self.head else 0
        storage = recipe.train.cache_storage
        if self.nbytes:
            self.storage = storage if storage != "auto" else "memory" if self.nbytes <= self.memory_budget else "disk"
        self.image_bytes = sum(counts) * image_size * image_size * 3
        left = self.memory_budget - (self.nbytes if self.storage == "memory" else 0)
        self.image_cache = recipe.data.cache and (storage == "memory" or storage == "auto" and self.image_bytes <= left)
        if not self.nbytes and strategy not in CACHE_STRATEGIES and "auto" in (head.cache_features,
                                                                                 fine_tune.cache_activations):
            self.notes.append(f"no activation cache under distribute.strategy {strategy!r}: every epoch runs "
                              "the frozen layers (slower per epoch)")


def estimate_seconds(the_plan: Plan) -> dict[str, float]:
    """Rough seconds per stage on this machine: a timed forward pass of the backbone, scaled by the work.

    The weightless backbone runs one batch at the plan's image size; a training step is taken as
    three forward passes (forward and backward) of the layers that train, validation as one of all.
    """
    import time

    import keras
    import numpy as np

    from retail_vision import backbone_layers

    recipe, data = the_plan.recipe, the_plan.data
    backbone = _weightless(the_plan.backbone)
    batch = min(recipe.train.batch_size, 8)

    def per_image(model, shape) -> float:
        inputs = np.random.default_rng(0).uniform(0, 255, (batch, *shape)).astype("float32")
        model(inputs, training=False)  # traces
        started = time.perf_counter()
        for _ in range(3):
            model(inputs, training=False)
        return (time.perf_counter() - started) / (3 * batch)

    size = the_plan.image_size
    forward = per_image(backbone, (size, size, 3))
    top = forward
    if the_plan.cache_cut is not None:
        cut = backbone_layers.fine_tune_cut(backbone, the_plan.cache_cut)
        shape = keras.Model(backbone.input, cut).compute_output_shape((1, size, size, 3))[1:]
        top = per_image(keras.Model(cut, backbone.output), shape)
    train_images, val_images = data.train_count, data.validation_count
    seconds = {}
    if any(phase.cached for phase in the_plan.phases):
        seconds["cache"] = (the_plan.views * train_images + val_images) * forward
    for phase in the_plan.phases:
        if phase.name == "head":
            per_epoch = 0.0 if phase.cached else (train_images + val_images) * forward
        else:
            trained = top if phase.cached else forward
            per_epoch = (3 * train_images + val_images) * trained
        seconds[phase.name] = phase.epochs * per_epoch
    return seconds


@functools.lru_cache(maxsize=1)
def _weightless(spec: backbones.BackboneSpec):
    """The backbone's architecture without weights, built once for the plan's checks and the time estimate."""
    return spec.build("none")


def _should_cache(setting, strategy: str) -> bool:
    """`true`/`false` as asked; `auto` caches under the strategies where training on a cache is tested."""
    if setting != "auto":
        return bool(setting)
    return strategy in CACHE_STRATEGIES


def memory_budget() -> int:
    """Bytes an activation cache may take in memory: a share of what is available now."""
    import psutil

    return int(psutil.virtual_memory().available * MEMORY_SHARE)


def _free_bytes(folder: str) -> int:
    """Free disk space where `folder` is or would be created, plus the cache an interrupted run left there."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    left = os.path.join(folder, CACHE_FOLDER)
    reusable = sum(entry.stat().st_size for entry in os.scandir(left)) if os.path.isdir(left) else 0
    return shutil.disk_usage(existing).free + reusable


def _inverse_frequency(counts: dict[str, int]) -> dict[int, float]:
    """Inverse class frequency, scaled so that the average weight per image is 1."""
    total, k = sum(counts.values()), len(counts)
    return {i: total / (k * max(count, 1)) for i, count in enumerate(counts.values())}


def _raise_all(problems: list[UserError], recipe: Recipe) -> None:
    """One problem raises as it is; several raise one RecipeError listing them, a line each.

    Recipe problems are prefixed with the recipe file, as the loader's are; data problems name their path.
    """
    if not problems:
        return
    if len(problems) == 1:
        error = problems[0]
        raise type(error)(f"{recipe.source}: {error}" if recipe.source and isinstance(error, RecipeError) else str(error))
    raise RecipeError.listing([str(error) for error in problems], recipe.source or "recipe")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _size(nbytes: int) -> str:
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.0f} kB"
