"""Every registered backbone builds into a classifier, saves to .keras and reloads identically."""

import numpy as np
import pytest

from retail_vision import backbones
from retail_vision.classifier import build_classifier
from retail_vision.errors import UserError, WeightsError

REGISTERED = [name for name in backbones.names() if backbones.get(name).family != "test"]
# Over 10 s each to build and save on 2 cores: run with -m slow (CI does).
LARGE = {"efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
         "efficientnetv2_b3", "efficientnetv2_s"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in REGISTERED]
)
def test_classifier_builds_saves_and_reloads(name, tmp_path):
    import keras

    spec = backbones.get(name)
    classifier = build_classifier(name, 4, "none", image_size=64)
    assert classifier.get_layer("backbone").output.shape[-1] == spec.feature_dim
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    probabilities = np.asarray(classifier(images, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    classifier.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(images, training=False)), probabilities, atol=1e-6)


def test_offline_keras_applications_weights_name_the_file_and_the_cache(monkeypatch, tmp_path):
    import keras

    def offline(fname, origin=None, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v3.file_utils.get_file", offline)
    with pytest.raises(WeightsError) as error:
        backbones.get("mobilenet_v3_small").build("imagenet")
    message = str(error.value)
    assert "weights_mobilenet_v3_small" in message and str(tmp_path / "models") in message


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown backbone 'mobilenet_v3'; did you mean 'mobilenet_v.*known: .*"):
        backbones.get("mobilenet_v3")
