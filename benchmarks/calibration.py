"""Expected calibration error of a run's model on its validation photos, before and after temperature scaling.

    python benchmarks/calibration.py RUN_DIR [--folds 2]

`fit` now calibrates at its end (`train.calibrate`); this applies the same fit to any run's
saved model, so runs made before it are measured too. Prints the temperature fitted on all the
validation photos and the ECE there before and after (as `fit` reports it: optimistic, the
photos that fitted T), and a cross-fitted ECE: each fold scored with the T fitted on the others.
Also the sampling noise of ECE on this many photos: the ECE a perfectly calibrated model with
these confidences would show (each photo right with the probability the model gives it; mean
and 95th percentile of 2,000 draws). A measured ECE near it says nothing more can be told apart.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._common import table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--folds", type=int, default=2)
    args = parser.parse_args()

    import numpy as np

    from retail_vision import run_directory
    from retail_vision.artifacts import load_images, load_model, resize_mode
    from scipy.special import softmax

    from retail_vision.calibration import fit_temperature, logits_of
    from retail_vision.evaluation.metrics import expected_calibration_error

    classifier, labels = load_model(args.run_dir)
    validation = run_directory.read_split(args.run_dir)["validation"]
    size, resize = int(classifier.input_shape[1]), resize_mode(args.run_dir)

    def batches():
        for start in range(0, len(validation), 32):
            images, failures = load_images(validation.paths[start:start + 32], size, resize)
            assert not failures, failures
            yield images.astype("float32"), np.eye(len(labels))[validation.labels[start:start + 32]]

    logits, truth = logits_of(classifier, batches())
    temperature = fit_temperature(logits, truth)
    folds = np.random.default_rng(0).permutation(len(truth)) % args.folds
    cross_fitted = np.zeros_like(logits)
    for fold in range(args.folds):
        held = folds == fold
        cross_fitted[held] = softmax(logits[held] / fit_temperature(logits[~held], truth[~held]), axis=1)
    calibrated = softmax(logits / temperature, axis=1)
    confidence, predicted = calibrated.max(axis=1), calibrated.argmax(axis=1)
    rng = np.random.default_rng(0)
    noise = []
    for _ in range(2000):  # a wrong answer is any other class: ECE only asks whether top-1 was right
        right = rng.random(len(truth)) < confidence
        noise.append(expected_calibration_error(np.where(right, predicted, (predicted + 1) % len(labels)),
                                                calibrated))
    row = {
        "photos": len(truth), "temperature": temperature,
        "top1": float((logits.argmax(1) == truth).mean()),
        "ece_before": expected_calibration_error(truth, softmax(logits, axis=1)),
        "ece_after_fitted_here": expected_calibration_error(truth, softmax(logits / temperature, axis=1)),
        f"ece_after_{args.folds}_fold_cross_fitted": expected_calibration_error(truth, cross_fitted),
        "ece_if_perfectly_calibrated_mean": float(np.mean(noise)),
        "ece_if_perfectly_calibrated_p95": float(np.percentile(noise, 95)),
    }
    print(table([row], list(row)))
    print("wrote", write_results("calibration", {"command": " ".join(sys.argv), **row}))


if __name__ == "__main__":
    main()
