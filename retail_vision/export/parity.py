"""The parity gate: run every exported artifact on held-out images and compare it with Keras.

Each row of `export_report.json`: artifact, files, total size, top-1 accuracy, top-1 agreement with
the Keras model, the top-1 points it loses against Keras on the same photos with their standard
error, max probability difference, latency per image on this machine (the median of single-image
calls after one untimed call, which traces or warms up what the first call would).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

LATENCY_IMAGES = 10  # latency is the median of this many single-image calls


@dataclasses.dataclass
class HeldOut:
    """Held-out images, resized like training (uint8), their labels and their files."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]


def measure(artifact: str, files: list[str], predict: Callable, held_out: HeldOut, reference: np.ndarray | None,
            batch_predict: Callable | None = None) -> tuple[dict, np.ndarray]:
    """One report row and the probabilities. `predict` takes a HeldOut; `batch_predict` overrides it for accuracy.

    `files` are the artifact's files or folders (their total size is reported).
    """
    probabilities = (batch_predict or predict)(held_out)
    predicted = probabilities.argmax(axis=1)
    latency_ms = latency(lambda i: predict(HeldOut(held_out.images[i : i + 1], held_out.labels[i : i + 1],
                                                   held_out.paths[i : i + 1])), len(held_out.labels))
    row = {
        "artifact": artifact,
        "files": [os.path.basename(f.rstrip("/")) for f in files],
        "size_bytes": sum(_size(f) for f in files),
        "top1": float(np.mean(predicted == held_out.labels)),
        "agreement": 1.0,
        "max_prob_diff": 0.0,
        "latency_ms": round(latency_ms, 2),
    }
    if reference is not None:
        row["agreement"] = float(np.mean(predicted == reference.argmax(axis=1)))
        row["max_prob_diff"] = float(np.abs(probabilities - reference).max())
        row["drop_points"], row["drop_se_points"] = paired_drop(reference.argmax(axis=1) == held_out.labels,
                                                                predicted == held_out.labels)
    return row, probabilities


def latency(call: Callable[[int], object], count: int) -> float:
    """Milliseconds of `call(i)` on image i of `count`: the median over the first LATENCY_IMAGES, after an
    untimed call."""
    if not count:
        return 0.0
    call(0)
    seconds = []
    for i in range(min(count, LATENCY_IMAGES)):
        started = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds) * 1000)


def paired_drop(reference_right: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """Top-1 points lost against the reference on the same photos, and the standard error of that.

    Paired: only photos where exactly one of the two is right count, so two models that agree
    almost everywhere are compared precisely even on a few hundred photos.
    """
    difference = reference_right.astype(float) - right.astype(float)
    standard_error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return float(difference.mean() * 100), float(standard_error * 100)


def measure_embedder(artifact: str, path: str, embed: Callable, held_out: HeldOut, reference: np.ndarray) -> dict:
    """A report row for an embedder file: how close its embeddings are to the Keras model's (cosine)."""
    embeddings = np.stack([embed(image[None])[0] for image in held_out.images])
    cosine = np.sum(embeddings * reference, axis=1) / np.maximum(
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
    latency_ms = latency(lambda i: embed(held_out.images[i : i + 1]), len(held_out.images))
    return {"artifact": artifact, "files": [os.path.basename(path)], "size_bytes": _size(path),
            "min_cosine_to_keras": float(cosine.min()), "mean_cosine_to_keras": float(cosine.mean()),
            "latency_ms": round(latency_ms, 2)}


def format_table(rows: list[dict]) -> str:
    header = f"{'artifact':<24} {'size':>9} {'top-1':>7} {'vs keras':>11} {'agree':>7} {'max|dp|':>8} {'ms/img':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        if "top1" not in row:  # an embedder: how close to the Keras embedding
            lines.append(f"{row['artifact']:<24} {row['size_bytes'] / 1e6:>7.2f}MB  cosine to Keras: min "
                         f"{row['min_cosine_to_keras']:.4f}, mean {row['mean_cosine_to_keras']:.4f}  "
                         f"{row['latency_ms']:>8.2f}" + ("  (the source version's file and row)"
                                                          if "measured_in" in row else ""))
            continue
        change = f"{-row['drop_points']:+.1f}+-{row['drop_se_points']:.1f}" if "drop_points" in row else ""
        lines.append(
            f"{row['artifact']:<24} {row['size_bytes'] / 1e6:>7.2f}MB {row['top1'] * 100:>6.1f}% {change:>11} "
            f"{row['agreement'] * 100:>6.1f}% {row['max_prob_diff']:>8.4f} {row['latency_ms']:>8.2f}"
        )
    return "\n".join(lines)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
