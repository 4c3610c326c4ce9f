"""Reads torch `.pth` state dicts without torch, and without running any code a downloaded file might carry.

A torch checkpoint is a pickle whose tensors point at raw storages, in one of two layouts:
- zip (torch >= 1.6): `<prefix>/data.pkl` plus one member `<prefix>/data/<key>` per storage;
- legacy (torchvision's older files, such as `squeezenet1_1-b8a52dc0.pth`): a stream of pickles (magic number,
  protocol version, system info, the object, the storage keys) followed by each storage as an int64 element
  count and its bytes.
The pickle is read by an Unpickler that resolves only the few names a state dict needs (`ALLOWED_GLOBALS`:
the tensor-rebuild functions, the typed storages, OrderedDict) and refuses every other name with a ModelError,
so a crafted file cannot call `os.system` or import anything.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from humwatch.agent.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 below: numpy has no bfloat16
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}


class StorageType:
    """Stands for `torch.<Name>Storage` in the pickle: only its element type matters here."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class Storage:
    """A flat array of one storage; filled from the archive or the legacy stream after the pickle is read."""

    def __init__(self, storage_type: StorageType, numel: int):
        self.type = storage_type
        self.numel = int(numel)
        self.array: np.ndarray | None = None


class LazyTensor:
    """A tensor named by the pickle: a strided view of a storage, materialised once every storage is read."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise ValueError("a tensor points at a storage the file does not contain")
        itemsize = data.dtype.itemsize
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1 if all(self.size) else 0
        if self.offset < 0 or end > len(data) or any(s < 0 for s in self.stride):
            raise ValueError(f"a tensor of size {self.size} reaches past its storage of {len(data)} elements")
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=[s * itemsize for s in self.stride])
        if self.storage.type.name == "BFloat16Storage":
            return (view.astype(np.uint32) << 16).view(np.float32)
        return np.array(view)  # a contiguous copy, detached from the file's buffer


def _rebuild_tensor(storage: Storage, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> LazyTensor:
    """torch._utils._rebuild_tensor(_v2): requires_grad, backward hooks and metadata do not matter for weights."""
    if not isinstance(storage, Storage):
        raise ValueError("a tensor is rebuilt from something other than a storage")
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data: LazyTensor, *_ignored: Any) -> LazyTensor:
    """torch._utils._rebuild_parameter(_with_state): a Parameter's data is the tensor itself."""
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Callable | type | StorageType] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; storages come through persistent ids, which `load_storage` turns into
    Storage objects keyed by name."""

    def __init__(self, file: BinaryIO, source: str, storages: dict[str, Storage]):
        super().__init__(file)
        self.source = source
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ModelError(f"{self.source}: refused: the checkpoint's pickle asks for {module}.{name}, which is "
                             "not part of a plain state dict (a crafted or foreign file?)") from None

    def persistent_load(self, pid: Any) -> Storage:
        # zip: ('storage', type, key, location, numel); legacy adds view metadata (None for whole storages).
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], StorageType)):
            raise ModelError(f"{self.source}: refused: unexpected persistent id in the checkpoint's pickle")
        if len(pid) > 5 and pid[5] is not None:
            raise ModelError(f"{self.source}: storage views (torch < 0.4 files) are not supported")
        key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(pid[1], pid[4])
        return storage


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a torch `.pth` state dict (zip or legacy layout) as numpy arrays, by key; ModelError naming
    the file when it is damaged, not a state dict, or asks for anything beyond tensors."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            state, storages = _read_zip(path)
        else:
            state, storages = _read_legacy(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelError(f"{path}: holds a {type(state).__name__}, not a state dict")
        return {str(k): v.to_numpy() for k, v in state.items() if isinstance(v, LazyTensor)}
    except ModelError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, AttributeError, struct.error,
            pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _read_zip(path: Path) -> tuple[Any, dict[str, Storage]]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError("big-endian checkpoints are not supported")
        storages: dict[str, Storage] = {}
        state = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), str(path), storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.array = np.frombuffer(raw, storage.type.dtype, count=storage.numel)
    return state, storages


def _read_legacy(path: Path) -> tuple[Any, dict[str, Storage]]:
    with open(path, "rb") as f:
        def plain() -> Any:  # one of the stream's small pickles, read by the same restricted reader
            return RestrictedUnpickler(f, str(path), {}).load()

        if plain() != LEGACY_MAGIC:
            raise ValueError("neither a zip archive nor a legacy torch file (wrong magic number)")
        if plain() != LEGACY_PROTOCOL:
            raise ValueError("unknown legacy torch protocol version")
        info = plain()
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise ValueError("big-endian checkpoints are not supported")
        storages: dict[str, Storage] = {}
        state = RestrictedUnpickler(f, str(path), storages).load()
        for key in plain():
            storage = storages[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            raw = f.read(count * storage.type.dtype.itemsize)
            if count != storage.numel or len(raw) != count * storage.type.dtype.itemsize:
                raise ValueError(f"storage {key} is cut short or its size disagrees with the pickle")
            storage.array = np.frombuffer(raw, storage.type.dtype)
    return state, storages
