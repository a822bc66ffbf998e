"""TFLite metadata so MediaPipe Tasks run a file as is: ImageClassifier (labels, and the unknown-product
threshold as its score threshold) and ImageEmbedder.

Written the way the metadata populator does it: a `TFLITE_METADATA` buffer in the model
flatbuffer, plus `labels.txt` appended as a zip archive for a classifier. The schema bindings
come from the `mediapipe` package (the `[mediapipe]` extra); without it the file is written
without metadata, which LiteRT does not need, and the export report says how to add it.
(MediaPipe's own `metadata_writers` would do this, but in mediapipe 1.2 they import a compiled
module the wheel does not ship: `No module named 'mediapipe.tasks.cc'`.)
"""

from __future__ import annotations

import io
import zipfile

LABELS_FILE = "labels.txt"
INSTALL_HINT = "pip install 'retail-vision[mediapipe]'"


def available() -> bool:
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated  # noqa: F401
    except ImportError:
        return False
    return True


def add_classifier_metadata(model: bytes, labels: list[str], name: str, score_threshold: float | None = None) -> bytes:
    """`model` with classifier metadata and packed labels; with `score_threshold`, ImageClassifier's default
    options return no category for a photo whose top probability is below it (an unknown product)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta

    scores = _feature_tensor(meta, "probability", "Probabilities of the classes in labels.txt")
    scores.stats = meta.StatsT()
    scores.stats.max, scores.stats.min = [1.0], [0.0]
    label_file = meta.AssociatedFileT()
    label_file.name = LABELS_FILE
    label_file.description = "Class names, one per line, in output order"
    label_file.type = meta.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [label_file]
    if score_threshold is not None:
        thresholding = meta.ProcessUnitT()
        thresholding.optionsType = meta.ProcessUnitOptions.ScoreThresholdingOptions
        thresholding.options = meta.ScoreThresholdingOptionsT()
        thresholding.options.globalScoreThreshold = float(score_threshold)
        scores.processUnits = [thresholding]
    with_metadata = _with_metadata(model, meta, name, "Product recognizer trained with retail-vision", scores)

    # === labels.txt packed as a zip after the flatbuffer ===
    packed = io.BytesIO(with_metadata)
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
    return packed.getvalue()


def add_embedder_metadata(model: bytes, name: str) -> bytes:
    """`model` (image -> L2-normalised embedding) with the metadata MediaPipe's ImageEmbedder needs."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta

    embedding = _feature_tensor(meta, "embedding", "L2-normalised product embedding: cosine similarity = dot product")
    return _with_metadata(model, meta, name, "Product embedder trained with retail-vision", embedding)


def _feature_tensor(meta, name: str, description: str):
    tensor = meta.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = meta.ContentT()
    tensor.content.contentPropertiesType = meta.ContentProperties.FeatureProperties
    tensor.content.contentProperties = meta.FeaturePropertiesT()
    return tensor


def _with_metadata(model: bytes, meta, name: str, description: str, output) -> bytes:
    """The flatbuffer with a TFLITE_METADATA buffer: a raw-pixel RGB input and the given output tensor."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    image = meta.TensorMetadataT()
    image.name = "image"
    image.description = "RGB image, uint8 0..255, resized to the model's input size"
    image.content = meta.ContentT()
    image.content.contentPropertiesType = meta.ContentProperties.ImageProperties
    image.content.contentProperties = meta.ImagePropertiesT()
    image.content.contentProperties.colorSpace = meta.ColorSpaceType.RGB
    # The model normalises inside its graph: it takes raw pixels (mean 0, std 1).
    normalization = meta.ProcessUnitT()
    normalization.optionsType = meta.ProcessUnitOptions.NormalizationOptions
    normalization.options = meta.NormalizationOptionsT()
    normalization.options.mean = [0.0]
    normalization.options.std = [1.0]
    image.processUnits = [normalization]
    image.stats = meta.StatsT()
    image.stats.max, image.stats.min = [255.0], [0.0]

    subgraph = meta.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [output]
    metadata = meta.ModelMetadataT()
    metadata.name = name
    metadata.description = description
    metadata.version = "v1"
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), b"M001")
    metadata_buffer = builder.Output()

    tflite = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = list(metadata_buffer)
    tflite.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = "TFLITE_METADATA"
    entry.buffer = len(tflite.buffers) - 1
    tflite.metadata = (tflite.metadata or []) + [entry]
    builder = flatbuffers.Builder(0)
    builder.Finish(tflite.Pack(builder), b"TFL3")
    return bytes(builder.Output())
