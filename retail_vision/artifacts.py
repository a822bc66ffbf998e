"""Load what a run wrote: a run directory or a `.keras` file -> (classifier, labels)."""

from __future__ import annotations

import os

from retail_vision import run_directory
from retail_vision.errors import UserError


def load_model(path: str):
    """Return (keras.Model, class names) from a run directory or a `.keras` file (Keras safe mode)."""
    import keras

    if os.path.isdir(path):
        model_file = os.path.join(path, run_directory.MODEL_FILE)
        labels_file = os.path.join(path, run_directory.LABELS_FILE)
    else:
        model_file = path
        labels_file = os.path.join(os.path.dirname(path), run_directory.LABELS_FILE)
    if not os.path.isfile(model_file):
        raise UserError(f"{path}: no model found (expected a run directory or a .keras file)")
    model = keras.saving.load_model(model_file, safe_mode=True)
    if os.path.isfile(labels_file):
        labels = run_directory.read_labels(labels_file)
    else:
        labels = [str(i) for i in range(model.output_shape[-1])]
    return model, labels
