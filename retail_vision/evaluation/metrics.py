"""Classification metrics from true labels and predicted probabilities; plain numpy.

Conventions every function here follows:
- `y_true` holds class indices [N]; `probs` holds probabilities [N, C] in the model's label order;
  a `Ranked` holds what the metrics read of them (the top classes, the true class's probability).
- Ties are broken towards the LOWEST class index, as `numpy.argmax` does: the top-1 prediction of
  [0.4, 0.4, 0.2] is class 0, and top-k takes tied classes in index order (a stable sort).
- Macro averages and balanced accuracy count only classes with support (> 0 true images):
  a model's class that the evaluation data lacks has no recall, and averaging in a 0 would make
  the same photos score differently against a 10-class and an 81-class model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LOG_LOSS_EPS = 1e-15
ECE_BINS = 15
TOP_K = 5  # the `top5` metric: a Ranked keeps at least this many classes per photo


@dataclasses.dataclass(frozen=True)
class Ranked:
    """What every metric and the report read of [N, C] probabilities, in O(N k) memory.

    At 5,000 classes the probabilities of 20,000 photos are 0.8 GB in float64; their k most
    probable classes and the true class's probability are a few MB. Built batch by batch
    (`Ranked.of` on each, then `Ranked.joined`) so the [N, C] array never exists.
    """
    y_true: np.ndarray  # [N] true class indices
    classes: np.ndarray  # [N, k] class indices, most probable first; ties keep the lower index first
    probabilities: np.ndarray  # [N, k] their probabilities
    true_probability: np.ndarray  # [N] the probability of the true class
    num_classes: int

    @classmethod
    def of(cls, y_true, probs, k: int = TOP_K) -> "Ranked":
        y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or len(probs) != len(y_true):
            raise ValueError(f"probs: expected shape ({len(y_true)}, classes), received {probs.shape}")
        classes = ranked_classes(probs, min(k, probs.shape[1])).copy()  # not a view holding all C columns
        return cls(y_true, classes, np.take_along_axis(probs, classes, axis=1),
                   probs[np.arange(len(y_true)), y_true], probs.shape[1])

    @classmethod
    def joined(cls, parts: list["Ranked"]) -> "Ranked":
        return cls(*(np.concatenate([getattr(p, field) for p in parts])
                     for field in ("y_true", "classes", "probabilities", "true_probability")), parts[0].num_classes)

    @property
    def y_pred(self) -> np.ndarray:
        return self.classes[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities[:, 0]

    @property
    def correct(self) -> np.ndarray:
        return self.y_pred == self.y_true


def ranked_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """[N, k] class indices, most probable first; ties keep the lower index first."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def top_k_accuracy(ranked: Ranked, k: int) -> float:
    if k > ranked.classes.shape[1] and ranked.classes.shape[1] < ranked.num_classes:
        raise ValueError(f"top-{k}: only the {ranked.classes.shape[1]} most probable classes were kept")
    return float(np.mean(np.any(ranked.classes[:, :k] == ranked.y_true[:, None], axis=1)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C]: rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    NaN marks an undefined score: recall and F1 of a class without support, and precision of a
    class without support that was never predicted. A class with support that is never predicted
    gets precision 0 (as scikit-learn's default), so its F1 is 0 rather than undefined.
    """
    true_positives = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, np.where(support > 0, 0.0, np.nan))
        recall = np.where(support > 0, true_positives / support, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(support > 0, f1, np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def log_loss(ranked: Ranked) -> float:
    """Mean negative log probability of the true class, clipped so a confident miss stays finite."""
    return float(-np.mean(np.log(np.clip(ranked.true_probability, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS))))


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-1 confidence in equal-width bins (lo, hi]: count, mean confidence and accuracy per bin."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # 0.0 joins the first bin
    count = np.bincount(index, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / count
        accuracy = np.bincount(index, correct, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "confidence": mean_confidence,
            "accuracy": accuracy}


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of images) * |accuracy - mean confidence| (Guo et al., 2017)."""
    table = calibration_bins(confidence, correct, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float(np.sum(table["count"][used] / len(confidence) * gaps))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """`calibration_error` of [N, C] probabilities."""
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == y_true, bins)


def top_confusions(matrix: np.ndarray, labels: list[str], limit: int = 20) -> list[dict]:
    """The most frequent (true -> predicted) mistakes, most frequent first, then by name."""
    return [{"true": labels[r], "predicted": labels[c], "count": int(matrix[r, c])}
            for r, c in _confused_pairs(matrix, labels)[:limit]]


def most_confused_classes(matrix: np.ndarray, labels: list[str], limit: int) -> list[int]:
    """Up to `limit` class indices: both classes of each most frequent mistake in turn, then the rest in order."""
    chosen = dict.fromkeys(index for pair in _confused_pairs(matrix, labels) for index in pair)
    chosen.update(dict.fromkeys(range(len(labels))))  # no (or few) mistakes: fill up in label order
    return list(chosen)[:limit]


def _confused_pairs(matrix: np.ndarray, labels: list[str]) -> list[tuple[int, int]]:
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    rows, cols = np.nonzero(off_diagonal)
    return sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: (-matrix[rc], labels[rc[0]], labels[rc[1]]))


def coarse_accuracy(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], coarse_of: dict[str, str]) -> float:
    """Share of fine predictions whose coarse group (e.g. Apple) matches the true one's."""
    coarse = np.array([coarse_of[name] for name in labels], dtype=object)
    return float(np.mean(coarse[y_true] == coarse[y_pred]))


def compute(y_true, probs, labels: list[str], coarse_of: dict[str, str] | None = None) -> dict:
    """`summarize` [N, C] probabilities."""
    if np.ndim(probs) != 2 or np.shape(probs)[1] != len(labels):
        raise ValueError(f"probs: expected shape ({len(y_true)}, {len(labels)}), received {np.shape(probs)}")
    return summarize(Ranked.of(y_true, probs), labels, coarse_of)


def summarize(ranked: Ranked, labels: list[str], coarse_of: dict[str, str] | None = None) -> dict:
    """Every summary metric as JSON-ready values (see `retail_vision.evaluation.evaluator` for the keys)."""
    if ranked.num_classes != len(labels):
        raise ValueError(f"probabilities over {ranked.num_classes} classes for {len(labels)} labels")
    if len(ranked.y_true) == 0:
        raise ValueError("y_true: no images to score")
    y_true, y_pred = ranked.y_true, ranked.y_pred
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    scores = per_class_scores(matrix)
    present = scores["support"] > 0
    return {
        "images": int(len(y_true)),
        "top1": float(np.mean(ranked.correct)),
        "top5": top_k_accuracy(ranked, min(TOP_K, len(labels))),
        "macro_precision": float(np.mean(scores["precision"][present])),
        "macro_recall": float(np.mean(scores["recall"][present])),
        "macro_f1": float(np.mean(scores["f1"][present])),
        "balanced_accuracy": float(np.mean(scores["recall"][present])),
        "log_loss": log_loss(ranked),
        "ece": calibration_error(ranked.confidence, ranked.correct),
        "coarse_top1": coarse_accuracy(y_true, y_pred, labels, coarse_of) if coarse_of else None,
        "per_class": {
            name: {key: _json_number(scores[key][i]) for key in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(labels)
        },
        "top_confusions": top_confusions(matrix, labels),
    }


def open_set(known_scores, unknown_scores, known_correct, threshold: float) -> dict:
    """How well a rejection score tells known products (higher) from unknown ones, and the operating point.

    auroc: chance that a known photo outscores an unknown one. fpr_at_95_tpr: share of unknown
    photos accepted at the score that accepts 95% of the known ones. At `threshold`: known
    photos accepted, unknown photos rejected, and accuracy = (known photos accepted with the right
    class + unknown photos rejected) / all photos.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    known_scores, unknown_scores = np.asarray(known_scores, np.float64), np.asarray(unknown_scores, np.float64)
    accepted, rejected = known_scores >= threshold, unknown_scores < threshold
    result = {"known_images": int(len(known_scores)), "unknown_images": int(len(unknown_scores)),
              "threshold": float(threshold), "known_accepted": float(np.mean(accepted)),
              "unknown_rejected": float(np.mean(rejected)) if len(unknown_scores) else None,
              "accuracy_at_threshold": float((np.sum(accepted & np.asarray(known_correct)) + np.sum(rejected))
                                             / (len(known_scores) + len(unknown_scores))),
              "auroc": None, "fpr_at_95_tpr": None}
    if len(known_scores) and len(unknown_scores):
        truth = np.r_[np.ones(len(known_scores)), np.zeros(len(unknown_scores))]
        scores = np.r_[known_scores, unknown_scores]
        fpr, tpr, _ = roc_curve(truth, scores)
        result.update(auroc=float(roc_auc_score(truth, scores)), fpr_at_95_tpr=float(fpr[np.searchsorted(tpr, 0.95)]))
    return result


def _json_number(value):
    """NaN (undefined) becomes None, which JSON writes as null; counts stay ints."""
    if isinstance(value, (np.integer, int)):
        return int(value)
    return None if np.isnan(value) else float(value)
