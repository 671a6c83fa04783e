"""Reading GGUF metadata and tensor listings with gguf-py (memory-mapped, nothing copied)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np


def open_reader(path: str | Path) -> gguf.GGUFReader:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as error:  # gguf-py raises ValueError, struct.error, IndexError, ... on bad files
        raise ValueError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error})") from None


def field_value(field: Any) -> Any:
    """A GGUF field as a plain Python value (str, int, float, bool, or a list of them)."""
    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        item_type = types[-1]
        if item_type == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [_scalar(field.parts[i], item_type) for i in field.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return _scalar(field.parts[field.data[0]], types[0])


def _scalar(part: np.ndarray, value_type: gguf.GGUFValueType) -> Any:
    value = part[0]
    if value_type == gguf.GGUFValueType.BOOL:
        return bool(value)
    if value_type in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64):
        return float(value)
    return int(value)


def read_fields(path: str | Path, *, skip_prefixes: tuple[str, ...] = ("tokenizer.ggml.",)) -> dict[str, Any]:
    """Every metadata key except the (large) tokenizer arrays."""
    reader = open_reader(path)
    return {name: field_value(field) for name, field in reader.fields.items()
            if not name.startswith(skip_prefixes) and not name.startswith("GGUF.")}


def read_tensor_shapes(path: str | Path) -> list[tuple[str, tuple[int, ...]]]:
    reader = open_reader(path)
    return [(tensor.name, tuple(int(n) for n in tensor.shape)) for tensor in reader.tensors]
