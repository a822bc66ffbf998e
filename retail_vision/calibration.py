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

from retail_vision.classifier import LOGITS_LAYER, divide_logits
from retail_vision.evaluation.metrics import expected_calibration_error

# Temperatures searched. The cosine head's fixed scale leaves models underconfident (T ~0.75 on
# the grocery photos; ~0.5 with label smoothing); a T far below that only comes from validation
# photos with (almost) no mistakes, which say nothing about how sure to be, and would make every
# answer ~100% sure.
LOG_T_RANGE = (np.log(0.25), np.log(20.0))


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
    return Calibration(temperature, expected_calibration_error(labels, softmax(logits)),
                       expected_calibration_error(labels, softmax(logits / temperature)), len(labels))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in LOG_T_RANGE minimising the mean negative log-likelihood of softmax(logits / T).

    The likelihood is unimodal in log T, so a golden-section search finds it.
    """
    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    low, high = LOG_T_RANGE
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):  # the interval shrinks to 1e-12 of its width
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def logits_of(classifier: keras.Model, batches) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C] float64, true class [N]) of the classifier on the batches."""
    logits = keras.Model(classifier.input, classifier.get_layer(LOGITS_LAYER).output)
    rows, labels = [], []
    for images, one_hot in batches:
        rows.append(np.asarray(logits(images, training=False), np.float64))
        labels.append(np.argmax(np.asarray(one_hot), axis=1))
    return np.concatenate(rows), np.concatenate(labels)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
