"""Rewriting a GGUF file: change metadata keys and patch whole tensors, copy every other byte unchanged.

Tensor offsets are relative to the data section, and a patch keeps a tensor's size, so the tensor infos are
copied as they are. The written data section is read back and compared with what was meant (the source
bytes, or the patched bytes), then a temporary file is renamed over the target (also when target is the
source itself), so a failure at any point leaves the target as it was.

Two writers of one folder (two `embed --in-place` runs, `embed` and `strip`) take turns: each scans and
rewrites under an exclusive lock of the target's folder (`atomic.locked_folder`), so the second one reads what
the first one wrote and nothing is lost. The source is checked to be the very file that was scanned: offsets
of another file would copy the wrong bytes.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import gguf

from ..errors import InputError
from .atomic import atomic_output
from .layout import GgufLayout

MetadataValue = str | int
TensorPatch = Callable[[bytes], bytes]  # the tensor's bytes in, the same number of bytes out


def rewrite(layout: GgufLayout, target: Path, *, drop_key: Callable[[str], bool],
            new_keys: dict[str, MetadataValue], patches: dict[str, TensorPatch] | None = None) -> Path:
    patches = patches or {}
    unknown = set(patches) - {tensor.name for tensor in layout.tensors}
    if unknown:
        raise ValueError(f"no tensor named {', '.join(sorted(unknown))} in {layout.path}")
    kept = [entry for key, entry in layout.metadata.items() if not drop_key(key) and key not in new_keys]
    info_start, info_end = layout.tensor_info_span
    with layout.path.open("rb") as original, atomic_output(Path(target)) as (out, temporary):
        if not layout.same_file(original):
            raise InputError(f"{layout.path} changed after it was read (another program wrote it): nothing was "
                             "written; run the command again")
        data_size = os.fstat(original.fileno()).st_size - layout.data_offset
        out.write(b"GGUF" + struct.pack("<IQQ", layout.version, len(layout.tensors), len(kept) + len(new_keys)))
        for entry in kept:
            original.seek(entry.start)
            out.write(original.read(entry.end - entry.start))
        for key, value in new_keys.items():
            out.write(_encode_entry(key, value))
        original.seek(info_start)
        out.write(original.read(info_end - info_start))
        out.write(b"\0" * (-out.tell() % layout.alignment))
        data_start = out.tell()
        out.flush()
        segments = _segments(layout, patches, original, data_size)
        for start, end, replacement in segments:
            if replacement is None:
                _copy_range(original, layout.data_offset + start, out, data_start + start, end - start)
            else:
                out.seek(data_start + start)
                out.write(replacement)
        out.flush()
        _verify(layout.path, layout.data_offset, temporary, data_start, segments)
    return Path(target)


def _segments(layout: GgufLayout, patches: dict[str, TensorPatch], original: BinaryIO,
              data_size: int) -> list[tuple[int, int, bytes | None]]:
    """The data section as (start, end, replacement or None for unchanged) spans, in order."""
    segments: list[tuple[int, int, bytes | None]] = []
    position = 0
    for tensor in sorted((t for t in layout.tensors if t.name in patches), key=lambda t: t.offset):
        original.seek(layout.data_offset + tensor.offset)
        patched = patches[tensor.name](original.read(tensor.nbytes))
        if len(patched) != tensor.nbytes:
            raise RuntimeError(f"patch of {tensor.name} changed its size")
        if tensor.offset > position:
            segments.append((position, tensor.offset, None))
        segments.append((tensor.offset, tensor.offset + tensor.nbytes, patched))
        position = tensor.offset + tensor.nbytes
    if position < data_size:
        segments.append((position, data_size, None))
    return segments


def _encode_entry(key: str, value: MetadataValue) -> bytes:
    encoded_key = key.encode("utf-8")
    head = struct.pack("<Q", len(encoded_key)) + encoded_key
    if isinstance(value, str):
        text = value.encode("utf-8")
        return head + struct.pack("<IQ", gguf.GGUFValueType.STRING, len(text)) + text
    return head + struct.pack("<II", gguf.GGUFValueType.UINT32, value)


def _copy_range(source: BinaryIO, source_offset: int, target: BinaryIO, target_offset: int, size: int) -> None:
    """Copy `size` bytes in the kernel where it can (copy_file_range), else through a buffer."""
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < size:
                step = os.copy_file_range(source.fileno(), target.fileno(), size - copied,
                                          source_offset + copied, target_offset + copied)
                if step == 0:
                    break
                copied += step
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or copied:
                raise
    remaining = size - copied
    source.seek(source_offset + copied)
    target.seek(target_offset + copied)
    while remaining > 0:
        chunk = source.read(min(remaining, 1 << 22))
        if not chunk:
            raise RuntimeError("the source file ended early")
        target.write(chunk)
        remaining -= len(chunk)


def _verify(source: Path, source_offset: int, written: Path, written_offset: int,
            segments: list[tuple[int, int, bytes | None]]) -> None:
    chunk = 1 << 22
    with source.open("rb") as a, written.open("rb") as b:
        if b.seek(0, os.SEEK_END) - written_offset != a.seek(0, os.SEEK_END) - source_offset:
            raise RuntimeError(f"{written} has a data section of the wrong size; nothing was replaced")
        for start, end, replacement in segments:
            b.seek(written_offset + start)
            if replacement is not None:
                same = b.read(end - start) == replacement
            else:
                a.seek(source_offset + start)
                same, left = True, end - start
                while same and left > 0:
                    size = min(chunk, left)
                    same = a.read(size) == b.read(size)
                    left -= size
            if not same:
                raise RuntimeError(f"tensor data written to {written} differs from what was meant; "
                                   "nothing was replaced")
