"""What a run keeps on disk so that a kill at any moment (SIGKILL, power loss, Ctrl-C) costs at most the current epoch.

    <run_dir>/checkpoints/
        state.json                      the commit point: phases finished, per-epoch history,
                                        phase summaries, best val accuracy and its epoch
        <phase>/epoch-NNNN.weights.h5   the phase's training model after its NNNNth epoch: weights
                                        and optimizer state (so the learning-rate schedule continues)
        best-NNNN.weights.h5            classifier weights of the best epoch so far (any phase)
        after_head.weights.h5           classifier weights when the head phase ended

Every file is written to a temporary name and renamed, so none is ever half-written. An epoch's
files are written first, then state.json names that epoch, and only then are the files of the
epochs before it deleted: whatever the moment of a kill, state.json names whole files, and
`--resume` continues from them (an epoch cut short is trained again, never counted twice).
Keras's BackupAndRestore is not used: it rewrites its files in place, and a kill mid-write left
runs that could never resume (a 0-byte training_metadata.json, a torn HDF5 file).
"""

from __future__ import annotations

import glob
import json
import os
import time

import keras

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
AFTER_HEAD_WEIGHTS = "after_head.weights.h5"
_TEMPORARY = ".tmp.weights.h5"


class RunState:
    """The run's progress, committed after every epoch."""

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

    def path(self, filename: str) -> str:
        return os.path.join(self.folder, filename)

    def epoch_backup(self, phase: str, phase_epochs: int) -> str:
        return os.path.join(self.folder, phase, f"epoch-{phase_epochs:04d}.weights.h5")

    def best_weights(self, epoch: int | None = None) -> str:
        return self.path(f"best-{epoch or self.best_epoch or 0:04d}.weights.h5")

    def add_epoch(self, phase: str, logs: dict) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("phase", []).append(phase)

    def save(self) -> None:
        """Commit: write state.json (temporary name, rename), then delete the files it no longer names."""
        state = {"phases_done": self.phases_done, "history": self.history, "summaries": self.summaries,
                 "best": self.best, "best_epoch": self.best_epoch}
        path = self.path(STATE_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path + ".tmp", path)
        self._delete_unnamed()

    def _delete_unnamed(self) -> None:
        named = {self.best_weights()} | {self.epoch_backup(phase, self.phase_epochs(phase))
                                         for phase in set(self.history.get("phase", []))}
        candidates = glob.glob(self.path("best-*.weights.h5")) + glob.glob(self.path("*/epoch-*.weights.h5"))
        for stale in candidates + glob.glob(self.path(f"**/*{_TEMPORARY}"), recursive=True):
            if stale not in named:
                os.remove(stale)


def save_weights(model: keras.Model, path: str) -> None:
    """`model.save_weights(path)`, through a temporary name: the file at `path` is always whole."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path[: -len(".weights.h5")] + _TEMPORARY
    model.save_weights(temporary)
    os.replace(temporary, path)


def restore_epoch(model: keras.Model, state: RunState, phase: str) -> int:
    """Load the compiled training `model` (weights and optimizer) as it was after the phase's last committed epoch.

    Returns how many epochs of the phase were done (0: nothing to restore).
    """
    done = state.phase_epochs(phase)
    if done:
        model.optimizer.build(model.trainable_variables)  # its variables must exist before they load
        model.load_weights(state.epoch_backup(phase, done))
    return done


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch: back up the training model, keep the best classifier weights, commit the state.

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
        save_weights(self.model, self.state.epoch_backup(self.phase, self.state.phase_epochs(self.phase) + 1))
        score = logs.get("val_accuracy")
        if score is not None and score > self.state.best:
            save_weights(self.classifier, self.state.best_weights(epoch + 1))
            self.state.best, self.state.best_epoch = float(score), epoch + 1
        self.state.add_epoch(self.phase, logs)
        self.state.save()  # the commit: this epoch now counts


def restore_best(classifier: keras.Model, state: RunState) -> None:
    if state.best_epoch is not None:
        classifier.load_weights(state.best_weights())
