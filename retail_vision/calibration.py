"""Temperature scaling (Guo et al. 2017): one number T that makes the classifier's confidences mean what they say.

softmax(z / T) keeps every argmax; T is fitted on held-out photos to minimise their negative
log-likelihood. Dividing the logits layer's weights by T (`classifier.divide_logits`) puts the
temperature inside the model: every graph made from it (model.keras, SavedModel, TFLite,
MediaPipe) gives calibrated probabilities, with no new op.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from retail_vision.classifier import LOGITS_LAYER, divide_logits
from retail_vision.evaluation.metrics import calibration_error

# Temperatures searched. The cosine head's fixed scale leaves models underconfident (T ~0.75 on
# the grocery photos; ~0.5 with label smoothing); a T far below that only comes from validation
# photos with (almost) no mistakes, which say nothing about how sure to be, and would make every
# answer ~100% sure.
LOG_T_RANGE = (np.log(0.25), np.log(20.0))
CHUNK_VALUES = 2**16  # float64 temporaries of this many logits (0.5 MB) at a time


@dataclasses.dataclass(frozen=True)
class Calibration:
    temperature: float
    ece_before: float
    ece_after: float
    images: int

    def as_metrics(self) -> dict:
        return {"temperature": round(self.temperature, 4), "ece_uncalibrated": round(self.ece_before, 4),
                "ece": round(self.ece_after, 4), "images": self.images}


def calibrate(classifier: keras.Model, batches) -> Calibration:
    """Fit T on `batches` of (images, one-hot labels) and divide the classifier's logits by it, in place."""
    logits, labels = logits_of(classifier, batches)
    temperature = fit_temperature(logits, labels)
    divide_logits(classifier, temperature)
    correct = logits.argmax(axis=1) == labels  # the same at every temperature
    return Calibration(temperature, calibration_error(top_probability(logits), correct),
                       calibration_error(top_probability(logits, temperature), correct), len(labels))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in LOG_T_RANGE minimising the mean negative log-likelihood of softmax(logits / T).

    The likelihood is unimodal in log T: a bounded scalar minimiser finds it in ~20 passes over the logits.
    """
    def nll(log_t: float) -> float:
        total = 0.0
        for rows in _row_chunks(logits.shape):
            z = logits[rows].astype(np.float64) / np.exp(log_t)
            total += float(np.sum(logsumexp(z, axis=1) - z[np.arange(len(z)), labels[rows]]))
        return total / len(labels)

    found = minimize_scalar(nll, bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def top_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """[N] the largest probability of softmax(logits / T), without an [N, C] float64 copy."""
    rows = [1.0 / np.exp((logits[r] - logits[r].max(axis=1, keepdims=True)).astype(np.float64) / temperature)
            .sum(axis=1) for r in _row_chunks(logits.shape)]
    return np.concatenate(rows) if rows else np.zeros(0)


def logits_of(classifier: keras.Model, batches) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C] float32, true class [N]) of the classifier on the batches."""
    logits = keras.Model(classifier.input, classifier.get_layer(LOGITS_LAYER).output)
    rows, labels = [], []
    for images, one_hot in batches:
        rows.append(np.asarray(logits(images, training=False), np.float32))
        labels.append(np.argmax(np.asarray(one_hot), axis=1))
    return np.concatenate(rows), np.concatenate(labels)


def _row_chunks(shape: tuple[int, int]):
    """Slices of rows, CHUNK_VALUES logits each: 20,000 photos x 5,000 classes in float64 are 0.8 GB per temporary."""
    rows, classes = shape
    step = max(1, CHUNK_VALUES // max(classes, 1))
    return [slice(start, start + step) for start in range(0, rows, step)]
