"""One training phase: its training model, its optimizer and loss, and its resumable `fit`.

Each phase gets a training model of its own (built by the trainer, used once), so nothing a
phase's `fit` leaves on its model reaches the next phase.
"""

from __future__ import annotations

import time

import keras

from retail_vision.console import log
from retail_vision.planning import Phase
from retail_vision.training import checkpointing


def with_augmentation(classifier: keras.Model, augmenter, model_class=keras.Model) -> keras.Model:
    """The model that `fit` trains on images: augmentation (active only in training) in front of the classifier.

    The classifier is wrapped even without augmentation, so it is never compiled itself and
    its saved file carries no optimizer state. `model_class`: multi_worker.TrainingModel under `multi_worker`.
    """
    images = keras.Input(shape=classifier.input.shape[1:], name="image")
    augmented = augmenter(images) if augmenter is not None else images
    return model_class(images, classifier(augmented), name="training_model")


def compile_for(model: keras.Model, phase: Phase, train_config, num_classes: int) -> None:
    """The head trains at a constant rate; the fine-tune warms up, then decays on a cosine to 0."""
    learning_rate = phase.learning_rate
    if phase.name == "fine_tune":
        learning_rate = warmup_cosine(phase.learning_rate, phase.epochs * phase.steps_per_epoch, phase.warmup_steps)
    model.compile(
        optimizer=_optimizer(train_config, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_config.label_smoothing),
        metrics=_metrics(num_classes),
    )


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int):
    """Linear warmup from 0 to `peak` (fewer steps than `total_steps`), then cosine decay to 0 at `total_steps`."""
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total_steps - warmup_steps, 1), warmup_target=peak, warmup_steps=warmup_steps
    )


def score(model: keras.Model, val_ds, num_classes: int, cluster) -> dict:
    """Top-1 and top-5 of a (training) model on the validation batches, as the phases measured them."""
    with cluster.scope():
        model.compile(loss="categorical_crossentropy", metrics=_metrics(num_classes))
        scores = model.evaluate(val_ds, verbose=0, return_dict=True)
    return {"accuracy": float(scores["accuracy"]), "top5": float(scores["top5"])}


def _metrics(num_classes: int) -> list:
    return ["accuracy", keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5")]


def _optimizer(train_config, learning_rate):
    if train_config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=train_config.weight_decay)
    if train_config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(learning_rate)


class PhaseRunner:
    """Runs one phase's `fit` with the shared callbacks, resumable from its last completed epoch."""

    def __init__(self, classifier, state, train_config, run_dir, verbose, train_count):
        self.classifier = classifier
        self.state = state
        self.train_config = train_config
        self.run_dir = run_dir
        self.verbose = verbose
        self.train_count = train_count

    def run(self, phase: Phase, model, train_ds, val_ds, class_weight=None) -> None:
        name = phase.name
        done_before = checkpointing.restore_epoch(model, self.state, name)
        log(f"phase {name}: {phase.epochs} epoch{'s' if phase.epochs != 1 else ''}"
            + (f" (resuming after epoch {done_before})" if done_before else ""))
        recorder = checkpointing.EpochRecorder(self.classifier, self.state, name)
        callbacks = [
            recorder,
            keras.callbacks.TensorBoard(f"{self.run_dir}/logs/{name}", write_graph=False, profile_batch=0),
        ]
        patience = self.train_config.early_stopping.patience
        if patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience, restore_best_weights=True)
            )
        first_epoch = self.state.epochs_done - done_before  # where the phase starts in the run's epoch count
        steps = phase.steps_per_epoch if phase.cached else None  # cached datasets are endless
        started = time.perf_counter()
        model.fit(
            train_ds, validation_data=val_ds, initial_epoch=first_epoch + done_before,
            epochs=first_epoch + phase.epochs,
            steps_per_epoch=steps, class_weight=class_weight, callbacks=callbacks, verbose=self.verbose,
            shuffle=False,  # the tf.data pipeline already shuffles, seeded
        )
        wall = time.perf_counter() - started
        epochs = [i for i, p in enumerate(self.state.history["phase"]) if p == name]
        ran_now = len(recorder.epoch_seconds)
        val_top1 = [self.state.history["val_accuracy"][i] for i in epochs]
        self.state.summaries[name] = {
            "epochs": len(epochs),
            "val_top1": val_top1[-1],
            "val_top5": self.state.history["val_top5"][epochs[-1]],
            "best_val_top1": max(val_top1),
            "wall_s": round(wall, 2) + self.state.summaries.get(name, {}).get("wall_s", 0.0),
            "epoch_s": [round(s, 2) for s in recorder.epoch_seconds],
            "train_s": [round(s, 2) for s in recorder.train_seconds],  # per epoch, without validation
            "images_per_s": round(self.train_count * ran_now / wall, 1) if ran_now else None,
        }
        self.state.save()

