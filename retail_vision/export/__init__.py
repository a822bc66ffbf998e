"""Export: SavedModel for TF Serving and TFLite for devices, each parity-checked before it is published."""

from retail_vision.export.exporter import ExportResult, export_model

__all__ = ["ExportResult", "export_model"]
