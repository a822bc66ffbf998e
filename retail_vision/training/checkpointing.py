"""What a run keeps on disk so that a crash, SIGKILL or Ctrl-C never costs more than the current epoch.

    <run_dir>/checkpoints/
        state.json             phases finished, per-epoch history, phase summaries, best val accuracy
        best.weights.h5        classifier weights of the best epoch so far (any phase)
        after_head.weights.h5  classifier weights when the head phase ended
        head/, fine_tune/      Keras BackupAndRestore: model + optimizer state (so the learning-rate
                               schedule continues) at the last completed epoch of that phase

Every file is written to a temporary name and renamed, so a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import json
import os
import time

import keras

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"
AFTER_HEAD_WEIGHTS = "after_head.weights.h5"


class RunState:
    """The run's progress, saved after every epoch."""

    def __init__(self, run_dir: str):
        self.folder = os.path.join(run_dir, CHECKPOINTS)
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, STATE_FILE)
        saved = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
        self.phases_done: list[str] = saved.get("phases_done", [])
        self.history: dict[str, list] = saved.get("history", {})
        self.summaries: dict[str, dict] = saved.get("summaries", {})
        self.best: float = saved.get("best", float("-inf"))
        self.best_epoch: int | None = saved.get("best_epoch")

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("phase", []))

    def phase_epochs(self, phase: str) -> int:
        return self.history.get("phase", []).count(phase)

    def backup_dir(self, phase: str) -> str:
        return os.path.join(self.folder, phase)

    def path(self, filename: str) -> str:
        return os.path.join(self.folder, filename)

    def add_epoch(self, phase: str, logs: dict) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("phase", []).append(phase)

    def save(self) -> None:
        state = {"phases_done": self.phases_done, "history": self.history, "summaries": self.summaries,
                 "best": self.best, "best_epoch": self.best_epoch}
        path = self.path(STATE_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1)
        os.replace(path + ".tmp", path)


def save_weights(model: keras.Model, path: str) -> None:
    temporary = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(temporary)
    os.replace(temporary, path)


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch: record its metrics, keep the best classifier weights, save the state.

    Also times each epoch, with and without validation, for the run's metrics.
    """

    def __init__(self, classifier: keras.Model, state: RunState, phase: str):
        super().__init__()
        self.classifier = classifier
        self.state = state
        self.phase = phase
        self.epoch_seconds: list[float] = []  # training and validation
        self.train_seconds: list[float] = []  # training steps only

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._validation_started = None

    def on_test_begin(self, logs=None):
        self._validation_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._started)
        self.train_seconds.append((self._validation_started or now) - self._started)
        logs = logs or {}
        self.state.add_epoch(self.phase, logs)
        score = logs.get("val_accuracy")
        if score is not None and score > self.state.best:
            self.state.best, self.state.best_epoch = float(score), epoch + 1
            save_weights(self.classifier, self.state.path(BEST_WEIGHTS))
        self.state.save()


def restore_best(classifier: keras.Model, state: RunState) -> None:
    if os.path.isfile(state.path(BEST_WEIGHTS)):
        classifier.load_weights(state.path(BEST_WEIGHTS))
