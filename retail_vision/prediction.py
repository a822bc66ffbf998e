"""`predict`: any artifact, images or folders of images -> top-k classes per file.

The output format is the same for every artifact kind; unreadable files are reported one by
one and the rest are still predicted. A model with a rejection threshold (rejection.json)
answers `unknown`, with the photo's rejection score, for a product it does not know.
"""

from __future__ import annotations

import dataclasses
import os

from retail_vision.artifacts import load_images, load_predictor
from retail_vision.data.sources import IMAGE_EXTENSIONS


@dataclasses.dataclass
class Prediction:
    file: str
    top_k: list[tuple[str, float]]  # (label, probability), best first
    unknown: bool = False  # below the model's rejection threshold: not one of its products
    score: float | None = None  # the rejection score; None for a model without a threshold


def predict(model: str, inputs: list[str], top_k: int = 5, batch_size: int = 32, imagenet: bool = False):
    """Return (predictions, failures) where failures are (file, reason) pairs.

    With `imagenet`, `model` names a backbone, run with its original ImageNet head.
    """
    from retail_vision.artifacts import ImageNetPredictor

    predictor = ImageNetPredictor(model) if imagenet else load_predictor(model)
    files, failures = _image_files(inputs)
    predictions = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images, chunk_failures = load_images(chunk, predictor.image_size, predictor.resize)
        failures.extend(chunk_failures)
        failed = {path for path, _ in chunk_failures}
        readable = [path for path in chunk if path not in failed]
        if not readable:
            continue
        classified = predictor.classify(images)
        for row, (path, probabilities) in enumerate(zip(readable, classified.probabilities)):
            best = probabilities.argsort()[::-1][: min(top_k, len(predictor.labels))]
            ranked = [(predictor.labels[i], float(probabilities[i])) for i in best]
            if classified.scores is None:
                predictions.append(Prediction(path, ranked))
            else:
                predictions.append(Prediction(path, ranked, bool(classified.unknown[row]),
                                              float(classified.scores[row])))
    return predictions, failures


def _image_files(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    files, failures = [], []
    for item in inputs:
        if os.path.isdir(item):
            for folder, subfolders, names in os.walk(item):
                subfolders.sort()
                files.extend(os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(item):
            files.append(item)
        else:
            failures.append((item, "no such file or folder"))
    return files, failures


def as_text(prediction: Prediction) -> str:
    """`file: label 0.912, label 0.041, ...`, or `file: unknown (score 0.310); closest: label 0.412, ...`."""
    ranked = ", ".join(f"{label} {score:.3f}" for label, score in prediction.top_k)
    if prediction.unknown:
        return f"{prediction.file}: unknown (score {prediction.score:.3f}); closest: {ranked}"
    return f"{prediction.file}: {ranked}"


def as_json(predictions: list[Prediction], failures: list[tuple[str, str]]) -> dict:
    return {
        "predictions": [
            {"file": p.file, "unknown": p.unknown, "rejection_score": p.score,
             "top_k": [{"label": label, "score": score} for label, score in p.top_k]}
            for p in predictions
        ],
        "failures": [{"file": file, "reason": reason} for file, reason in failures],
    }
