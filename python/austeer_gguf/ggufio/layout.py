"""A fast scan of a GGUF file's layout: metadata entries with their byte spans, tensor infos, data offset.

gguf-py's GGUFReader turns every token string of the vocabulary into a numpy view (1-2 s for a small model);
this scanner only walks the bytes, decodes scalar and string values, and keeps arrays of numbers, so opening
a model for its shape, fingerprint or embedded profiles stays cheap. Tensor data is never read here.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from ..errors import InputError

_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {gguf.GGUFValueType.UINT8: "<u1", gguf.GGUFValueType.INT8: "<i1", gguf.GGUFValueType.UINT16: "<u2",
          gguf.GGUFValueType.INT16: "<i2", gguf.GGUFValueType.UINT32: "<u4", gguf.GGUFValueType.INT32: "<i4",
          gguf.GGUFValueType.FLOAT32: "<f4", gguf.GGUFValueType.BOOL: "?", gguf.GGUFValueType.UINT64: "<u8",
          gguf.GGUFValueType.INT64: "<i8", gguf.GGUFValueType.FLOAT64: "<f8"}


FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)


@dataclass(frozen=True)
class MetadataEntry:
    key: str
    value_type: gguf.GGUFValueType
    start: int  # byte span of the whole entry (key, type and value) in the file
    end: int
    value: Any  # scalars, strings and arrays of numbers; None for arrays of strings


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (the row length) first
    ggml_type: gguf.GGMLQuantizationType
    offset: int  # relative to the data section
    nbytes: int


@dataclass(frozen=True)
class GgufLayout:
    path: Path
    version: int
    metadata: dict[str, MetadataEntry]
    tensors: list[TensorEntry]
    tensor_info_span: tuple[int, int]
    alignment: int
    data_offset: int
    identity: tuple[int, ...] = ()  # (device, inode, size, mtime in ns) of the file scanned

    def same_file(self, opened: BinaryIO) -> bool:
        """Whether an open file is the one this layout was scanned from, unchanged."""
        return _identity(os.fstat(opened.fileno())) == self.identity

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.metadata.get(key)
        return default if entry is None else entry.value

    def values(self) -> dict[str, Any]:
        return {key: entry.value for key, entry in self.metadata.items()}


class _Cursor:
    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer
        self.position = 0

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buffer, self.position)[0]
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("<Q")
        end = self.position + length
        if end > len(self.buffer):
            raise ValueError("string runs past the end of the file")
        text = self.buffer[self.position:end].decode("utf-8", errors="replace")
        self.position = end
        return text

    def _skip_strings(self, count: int) -> None:
        # A vocabulary holds tens of thousands of strings: keep this loop free of method calls.
        buffer, position, unpack = self.buffer, self.position, struct.Struct("<Q").unpack_from
        for _ in range(count):
            position += 8 + unpack(buffer, position)[0]
        self.position = position

    def value(self, value_type: gguf.GGUFValueType) -> Any:
        if value_type == gguf.GGUFValueType.STRING:
            return self.string()
        if value_type == gguf.GGUFValueType.ARRAY:
            item_type = gguf.GGUFValueType(self.take("<I"))
            count = self.take("<Q")
            if item_type == gguf.GGUFValueType.STRING:
                self._skip_strings(count)
                return None
            if item_type == gguf.GGUFValueType.ARRAY:
                raise ValueError("nested arrays are not supported")
            dtype = np.dtype(_NUMPY[item_type])
            values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.position).tolist()
            self.position += dtype.itemsize * count
            return values
        return self.take(_SCALARS[value_type])


def scan(path: str | Path) -> GgufLayout:
    """Read the layout of a GGUF file; InputError for anything that is not a complete, readable GGUF."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is not a readable GGUF file (it is empty)")
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return dataclasses.replace(_scan(path, buffer), identity=_identity(os.fstat(file.fileno())))
    except (struct.error, ValueError, OverflowError, IndexError, KeyError, MemoryError) as error:
        raise InputError(f"{path} is not a readable GGUF file ({error})") from None


def _scan(path: Path, buffer: mmap.mmap) -> GgufLayout:
    cursor = _Cursor(buffer)
    if buffer[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    cursor.position = 4
    version = cursor.take("<I")
    if version & 0xFFFF == 0:
        raise ValueError("big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cursor.take("<Q"), cursor.take("<Q")
    metadata: dict[str, MetadataEntry] = {}
    for _ in range(n_kv):
        start = cursor.position
        key = cursor.string()
        value_type = gguf.GGUFValueType(cursor.take("<I"))
        value = cursor.value(value_type)
        metadata[key] = MetadataEntry(key, value_type, start, cursor.position, value)
    info_start = cursor.position
    tensors = []
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.take("<I")
        if n_dims > 4:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions (ggml has at most 4)")
        shape = tuple(cursor.take("<Q") for _ in range(n_dims))
        ggml_type = gguf.GGMLQuantizationType(cursor.take("<I"))
        offset = cursor.take("<Q")
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        tensors.append(TensorEntry(name, shape, ggml_type, offset, int(np.prod(shape)) * type_size // block))
    info_end = cursor.position
    alignment = metadata["general.alignment"].value if "general.alignment" in metadata else 32
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment is {alignment!r}; it must be a positive power of two")
    data_offset = info_end + (-info_end % alignment)
    end_of_data = max((t.offset + t.nbytes for t in tensors), default=0)
    if data_offset + end_of_data > len(buffer):
        raise ValueError(f"truncated: tensor data needs {data_offset + end_of_data} bytes, the file has {len(buffer)}")
    return GgufLayout(path, version, metadata, tensors, (info_start, info_end), alignment, data_offset)


def _identity(status: os.stat_result) -> tuple[int, ...]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def read_fields(path: str | Path) -> dict[str, Any]:
    """Every metadata value (arrays of strings as None)."""
    return scan(path).values()


def open_reader(path: str | Path) -> gguf.GGUFReader:
    """gguf-py's reader, for code that needs tensor data; ValueError on unreadable files."""
    scan(path)  # a clear message for truncated or foreign files before gguf-py sees them
    return gguf.GGUFReader(str(path), "r")
