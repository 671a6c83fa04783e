"""Safe file output: every file austeer-gguf writes goes through here.

- `check_output` refuses, before any work, an output that would overwrite an input (same path or the same
  file through a link) unless in place was asked for, anything that is not a regular file (a FIFO, a device,
  a folder), and a read-only file unless forced.
- `atomic_output` writes beside the target (``.<name>.<pid>.<random>.partial``), fsyncs, then renames over
  it; on any error, SIGINT or SIGTERM included (the command line turns SIGTERM into an exception), the
  partial file is removed. Partial files left by a process that no longer runs (killed with SIGKILL) are
  removed on the next write beside them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError


def check_output(target: str | Path, inputs: Iterable[str | Path] = (), *, in_place: bool = False,
                 force: bool = False) -> Path:
    """The target of a write, after refusing what would lose data (see the module docstring)."""
    target = Path(target)
    for source in inputs:
        if _same_file(target, Path(source)) and not in_place:
            raise InputError(f"{target} is an input of this command ({source}); writing it would replace the "
                             "input: choose another output, or pass --in-place where the command offers it")
    if target.exists() or target.is_symlink():
        mode = target.stat().st_mode if target.exists() else 0
        if not stat.S_ISREG(mode):
            raise InputError(f"{target} exists and is not a regular file: choose another output")
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) and not force:
            raise InputError(f"{target} is read-only: choose another output, or pass --force to replace it")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError(f"{target.parent} is not a folder")
    return target


def _same_file(a: Path, b: Path) -> bool:
    if not a.exists() or not b.exists():
        return a.resolve() == b.resolve()
    return os.path.samefile(a, b)


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield (file, temporary path); on normal exit the file replaces `target`, on error it is removed."""
    target = Path(target)
    if target.exists() and not target.is_file():
        raise InputError(f"{target} exists and is not a regular file: choose another output")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(target)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial",
                                         dir=target.parent)
    temporary_path = Path(temporary)
    try:
        os.chmod(temporary_path, _mode_for(target))
        with os.fdopen(handle, "wb") as file:
            yield file, temporary_path
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_path, target)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        if error.errno == errno.ENOSPC or "requested and" in str(error):  # numpy's tofile says the latter
            free = shutil.disk_usage(target.parent).free / 2**20
            raise OSError(errno.ENOSPC, f"the disk holding {target.parent} is full ({free:.0f} MB free) while "
                          f"writing {target.name}: free some space and try again") from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
        raise


def sweep_stale_partials(target: Path) -> list[Path]:
    """Remove partial files of `target` whose writing process is gone; returns them."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)\.[^.]+\.partial$")
    removed = []
    with contextlib.suppress(OSError):
        for candidate in target.parent.iterdir():
            match = pattern.match(candidate.name)
            if match and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mode_for(target: Path) -> int:
    """Keep the mode of a file being replaced; a new file gets the usual 0o666 minus the umask."""
    if target.exists():
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def locked_folder(folder: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock of a folder (flock on the folder itself: no lock file is left behind), so that
    writers that read a file and rename a new one over it take turns. Waits for another holder, up to
    `timeout` seconds. Where the system has no flock, nothing is locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InputError(f"another program has been writing in {folder} for {timeout:.0f} s: wait for it, "
                                     "then run the command again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_output(target) as (file, _):
        file.write(text.encode("utf-8"))
