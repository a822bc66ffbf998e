"""retail-vision: folders of product photos -> product recognizers for shelves, kiosks and servers.

The public API. Names are loaded on first use so that `import retail_vision` (and the CLI's
`--help`) does not pay for importing TensorFlow.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Recipe": "retail_vision.recipe",
    "plan": "retail_vision.planning",
    "Plan": "retail_vision.planning",
    "fit": "retail_vision.training",
    "RunResult": "retail_vision.training",
    "build_classifier": "retail_vision.classifier",
    "load_model": "retail_vision.artifacts",
    "load_predictor": "retail_vision.artifacts",
    "export_model": "retail_vision.export",
    "evaluate": "retail_vision.evaluation.evaluator",
    "predict": "retail_vision.prediction",
    "enroll": "retail_vision.enrollment",
    "UserError": "retail_vision.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retail_vision' has no attribute {name!r}")
