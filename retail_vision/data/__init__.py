"""Data: sources (folders, manifests, TFDS), the pre-training scan and the tf.data pipeline."""
