"""Unknown-product rejection: one score per photo, and the threshold below which a photo is "unknown".

Scores, each higher for a photo that looks like a known product:
    msp        the top (calibrated) softmax probability
    max_logit  the largest logit
    energy     log-sum-exp of the logits, i.e. minus the free energy (Liu et al., 2020)
    cosine     cosine between the photo's embedding and the nearest class vector of the head
               (for an enrolled class: its prototype, the mean embedding of its photos)

The threshold is set on photos of known products (the validation photos) so that `keep_known`
of them score at or above it. The record is stored as rejection.json beside the model (run
directory, export version) and inside every graph export writes. MediaPipe's ImageClassifier
thresholds the probabilities themselves, so the record also holds the probability threshold
that keeps the same share: `probability_threshold`, written into the TFLite metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from retail_vision.recipe import REJECTION_SCORES

UNKNOWN_LABEL = "unknown"  # the label an exported model answers for a rejected photo
REJECTION_FILE = "rejection.json"


@dataclasses.dataclass(frozen=True)
class Rejection:
    score: str  # one of REJECTION_SCORES
    threshold: float  # a photo is unknown when its score is below this
    probability_threshold: float  # the msp threshold with the same share of known photos kept
    keep_known: float  # the share of known photos the thresholds were set to keep
    images: int  # known photos they were set on

    def refitted(self, outputs: dict, directions: np.ndarray) -> "Rejection":
        """The same score and share, set on other known photos' outputs."""
        return fit_rejection([outputs], directions, self.score, self.keep_known)

    def unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) < self.threshold

    def write(self, folder: str) -> None:
        from retail_vision import run_directory

        run_directory.write_json(folder, REJECTION_FILE, dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: str) -> "Rejection | None":
        path = os.path.join(folder, REJECTION_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


def rejection_scores(score: str, probabilities, logits, embedding, directions):
    """[N] scores of one kind from a model's outputs; `directions`: [D, C] unit class vectors.

    Written with keras.ops, so the same lines run on numpy arrays and inside an exported graph.
    """
    import keras

    if score == "msp":
        return keras.ops.max(probabilities, axis=-1)
    if score == "max_logit":
        return keras.ops.max(logits, axis=-1)
    if score == "energy":
        return keras.ops.logsumexp(logits, axis=-1)
    if score == "cosine":
        return keras.ops.max(keras.ops.matmul(embedding, directions), axis=-1)
    raise ValueError(f"rejection score {score!r}; choose from {', '.join(REJECTION_SCORES)}")


def threshold_keeping(scores: np.ndarray, keep_known: float) -> float:
    """The largest threshold with at least `keep_known` of `scores` at or above it."""
    ordered = np.sort(np.asarray(scores, np.float64))
    return float(ordered[int(np.floor((1.0 - keep_known) * len(ordered) + 1e-9))]) if len(ordered) else 0.0


def fit_rejection(batches, directions: np.ndarray, score: str, keep_known: float) -> Rejection:
    """The Rejection of `score` set on known photos' model outputs, an iterable of {probabilities, logits,
    embedding} batches; each is reduced to two numbers per photo as it comes (at 5,000 classes the
    probabilities and logits of 20,000 photos would be 0.8 GB)."""
    known, top_probability = [], []
    for outputs in batches:
        known.append(np.asarray(rejection_scores(score, outputs["probabilities"], outputs["logits"],
                                                 outputs["embedding"], directions)))
        top_probability.append(np.max(outputs["probabilities"], axis=-1))
    known, top_probability = np.concatenate(known), np.concatenate(top_probability)
    return Rejection(score, threshold_keeping(known, keep_known), threshold_keeping(top_probability, keep_known),
                     keep_known, len(known))
