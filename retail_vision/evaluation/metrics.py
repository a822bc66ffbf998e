"""Classification metrics from true labels and predicted probabilities; plain numpy.

Conventions every function here follows:
- `y_true` holds class indices [N]; `probs` holds probabilities [N, C] in the model's label order.
- Ties are broken towards the LOWEST class index, as `numpy.argmax` does: the top-1 prediction of
  [0.4, 0.4, 0.2] is class 0, and top-k takes tied classes in index order (a stable sort).
- Macro averages and balanced accuracy count only classes with support (> 0 true images):
  a model's class that the evaluation data lacks has no recall, and averaging in a 0 would make
  the same photos score differently against a 10-class and an 81-class model.
"""

from __future__ import annotations

import numpy as np

LOG_LOSS_EPS = 1e-15
ECE_BINS = 15


def ranked_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """[N, k] class indices, most probable first; ties keep the lower index first."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    return float(np.mean(np.any(ranked_classes(probs, k) == y_true[:, None], axis=1)))


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


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped so a confident miss stays finite."""
    true_probs = np.clip(probs[np.arange(len(y_true)), y_true], LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(np.log(true_probs)))


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-1 confidence in equal-width bins (lo, hi]: count, mean confidence and accuracy per bin."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # 0.0 joins the first bin
    count = np.bincount(index, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / count
        accuracy = np.bincount(index, correct, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "confidence": mean_confidence,
            "accuracy": accuracy}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of (share of images) * |accuracy - mean confidence| (Guo et al., 2017)."""
    table = calibration_bins(y_true, probs, bins)
    used = table["count"] > 0
    gaps = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float(np.sum(table["count"][used] / len(y_true) * gaps))


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
    """Every summary metric as JSON-ready values (see `retail_vision.evaluation.evaluator` for the keys)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(labels)):
        raise ValueError(f"probs: expected shape ({len(y_true)}, {len(labels)}), received {probs.shape}")
    if len(y_true) == 0:
        raise ValueError("y_true: no images to score")
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    scores = per_class_scores(matrix)
    present = scores["support"] > 0
    return {
        "images": int(len(y_true)),
        "top1": float(np.mean(y_pred == y_true)),
        "top5": top_k_accuracy(y_true, probs, 5),
        "macro_precision": float(np.mean(scores["precision"][present])),
        "macro_recall": float(np.mean(scores["recall"][present])),
        "macro_f1": float(np.mean(scores["f1"][present])),
        "balanced_accuracy": float(np.mean(scores["recall"][present])),
        "log_loss": log_loss(y_true, probs),
        "ece": expected_calibration_error(y_true, probs),
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
