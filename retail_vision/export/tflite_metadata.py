"""TFLite metadata (labels, input normalisation) so MediaPipe Tasks' ImageClassifier runs a file as is.

Written the way the metadata populator does it: a `TFLITE_METADATA` buffer in the model
flatbuffer plus `labels.txt` appended as a zip archive. The metadata schema bindings come from
the `mediapipe` package (the `[mediapipe]` extra); without it the file is written without
metadata, which LiteRT does not need, and the export report says how to add it.
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


def add_metadata(model: bytes, labels: list[str], name: str) -> bytes:
    """Return `model` with classifier metadata and packed labels (needs the mediapipe package)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta

    # === Metadata ===
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

    scores = meta.TensorMetadataT()
    scores.name = "probability"
    scores.description = "Probabilities of the classes in labels.txt"
    scores.content = meta.ContentT()
    scores.content.contentPropertiesType = meta.ContentProperties.FeatureProperties
    scores.content.contentProperties = meta.FeaturePropertiesT()
    scores.stats = meta.StatsT()
    scores.stats.max, scores.stats.min = [1.0], [0.0]
    label_file = meta.AssociatedFileT()
    label_file.name = LABELS_FILE
    label_file.description = "Class names, one per line, in output order"
    label_file.type = meta.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [label_file]

    subgraph = meta.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]
    metadata = meta.ModelMetadataT()
    metadata.name = name
    metadata.description = "Product recognizer trained with retail-vision"
    metadata.version = "v1"
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), b"M001")
    metadata_buffer = builder.Output()

    # === Model flatbuffer with a TFLITE_METADATA buffer ===
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

    # === labels.txt packed as a zip after the flatbuffer ===
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
    return packed.getvalue()
