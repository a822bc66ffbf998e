"""Evaluation internals without TensorFlow: metrics (numpy), plots (matplotlib), the report folder.

The public call is `retail_vision.evaluate` (`evaluation/evaluator.py`); these modules take labels and probabilities,
so they also score predictions made elsewhere (a TFLite run on a device, a TF Serving log).
"""

from retail_vision.evaluation.metrics import compute as compute_metrics

__all__ = ["compute_metrics"]
