"""Atomic file output: write beside the target, fsync, then rename over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield (file, temporary path); on normal exit the file replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    temporary_path = Path(temporary)
    try:
        os.chmod(temporary_path, _mode_for(target))
        with os.fdopen(handle, "wb") as file:
            yield file, temporary_path
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        raise


def _mode_for(target: Path) -> int:
    """Keep the mode of a file being replaced; a new file gets the usual 0o666 minus the umask."""
    if target.exists():
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_output(target) as (file, _):
        file.write(text.encode("utf-8"))
