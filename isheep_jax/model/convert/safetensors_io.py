"""Streaming safetensors reader/writer on numpy memory maps (bf16 via ml_dtypes).

Our own small implementation of the documented format (8-byte little-endian header
length, JSON header, raw little-endian data) because the `safetensors` numpy backend has
no bfloat16, and because we want to read one tensor at a time from memory-mapped files
and to name the file and tensor when a file is truncated or corrupt.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator

import ml_dtypes
import numpy as np

from isheep_jax.core import io_utils

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read; the message names the file."""


def _local_copy(path: str) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """`path` itself if local; else a copy in a private temporary folder (memory maps need a
    local file), with the folder to keep alive as long as the map."""
    if "://" not in path:
        return path, None
    tmp = tempfile.TemporaryDirectory(prefix="isheep-safetensors-")
    local = os.path.join(tmp.name, os.path.basename(path))
    io_utils.as_path(path).copy(io_utils.as_path(local))
    return local, tmp


class SafetensorsFile:
    """Lazily reads tensors from one .safetensors file.

    Attributes:
      path: the file's path.
      metadata: the header's `__metadata__` dict ({} without one).
    """

    def __init__(self, path: str | os.PathLike):
        """Reads and checks the header, and memory-maps the data section.

        Args:
          path: the .safetensors file.

        Raises:
          SafetensorsError: the file is truncated, its header is corrupt, or a tensor has an
            unsupported dtype or a byte size that does not match its shape.
        """
        self.path = str(path)
        self._local, self._tmp = _local_copy(self.path)
        size = os.path.getsize(self._local)
        with open(self._local, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: truncated (file is {size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise SafetensorsError(
                    f"{self.path}: truncated or corrupt header (header claims {n} bytes, file has {size})"
                )
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: corrupt header JSON: {e}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = header
        data_len = size - self._data_start
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}"
                )
            begin, end = e["data_offsets"]
            want = DTYPES[e["dtype"]].itemsize * int(np.prod(e["shape"], dtype=np.int64))
            if end - begin != want:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} has {end - begin} bytes, shape {e['shape']} needs {want}"
                )
            if end > data_len:
                raise SafetensorsError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {end} "
                    f"of the data section, which has only {data_len} bytes"
                )
        self._mmap = (
            np.memmap(self._local, dtype=np.uint8, mode="r", offset=self._data_start, shape=(data_len,))
            if data_len
            else np.zeros((0,), np.uint8)
        )

    def keys(self) -> list[str]:
        """The tensor names, in header order."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name` (KeyError for an unknown name)."""
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only view of the memory map (copy it to keep it).

        Args:
          name: the tensor's name.

        Returns:
          The array in its stored dtype and shape.

        Raises:
          KeyError: the file has no tensor `name`.
        """
        e = self._entries[name]
        begin, end = e["data_offsets"]
        return self._mmap[begin:end].view(DTYPES[e["dtype"]]).reshape(e["shape"])


def write_safetensors(
    path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]], metadata: dict[str, str] | None = None
) -> None:
    """Writes (name, array) pairs through a temporary file and a rename.

    The header needs every tensor's size, so all arrays are collected (as C-contiguous
    arrays) before the first byte is written; their data is then written one at a time.

    Args:
      path: the .safetensors file to write.
      tensors: (name, array) pairs, in the order their data is laid out.
      metadata: the header's `__metadata__` (default: {"format": "pt"}).

    Raises:
      SafetensorsError: an array's dtype has no safetensors name (`DTYPES`).
    """
    items = [(name, np.ascontiguousarray(arr)) for name, arr in tensors]
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in items:
        if arr.dtype not in _NAMES:
            raise SafetensorsError(f"{path}: cannot write tensor {name!r} of dtype {arr.dtype}")
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # 8-byte alignment of the data section
    tmp = io_utils.as_path(f"{path}.tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in items:
            f.write(arr.tobytes())
    tmp.replace(io_utils.as_path(path))


class SafetensorsFolder:
    """All tensors of a Hugging Face folder: one file, or shards with an index."""

    def __init__(self, folder: str | os.PathLike):
        """Opens the folder's safetensors files (those of model.safetensors.index.json if present).

        Args:
          folder: the Hugging Face model folder.

        Raises:
          SafetensorsError: the folder has no .safetensors file (pickle checkpoints are
            named, not read), or a file cannot be read.
        """
        folder = str(folder)
        root = io_utils.as_path(folder)
        index = root / "model.safetensors.index.json"
        names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        files = [f for f in names if f.endswith(".safetensors")]
        if not files:
            pickles = [f for f in names if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
            if pickles:
                raise SafetensorsError(
                    f"{folder}: only pickle checkpoints found ({', '.join(pickles)}); they are not "
                    "read (unsafe to unpickle). Convert them to safetensors first, e.g. with "
                    "transformers: model.save_pretrained(dir, safe_serialization=True)"
                )
            raise SafetensorsError(f"{folder}: no .safetensors files")
        if index.exists():
            weight_map = io_utils.read_json(index)["weight_map"]
            files = sorted(set(weight_map.values()))
        self._files = {name: SafetensorsFile(str(root / name)) for name in files}
        self._where: dict[str, SafetensorsFile] = {}
        for st in self._files.values():
            for k in st.keys():
                self._where[k] = st

    def keys(self) -> list[str]:
        """The tensor names of all files."""
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        """Whether some file has tensor `name`."""
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        """The tensor `name` as a read-only view of its file's memory map.

        Args:
          name: the tensor's name.

        Returns:
          The array in its stored dtype and shape.

        Raises:
          SafetensorsError: no file has tensor `name`.
        """
        if name not in self._where:
            raise SafetensorsError(f"tensor {name!r} not found in {sorted(self._files)}")
        return self._where[name].get(name)

    def source(self, name: str) -> str:
        """The path of the file that holds tensor `name` (KeyError for an unknown name)."""
        return self._where[name].path

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (name, read-only array) for every tensor, file by file."""
        for k in self._where:
            yield k, self.get(k)
