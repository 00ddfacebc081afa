"""Files written whole or not at all: what a run directory and an exported model are saved with.

A file is written under a hidden temporary name, fsync'ed, then renamed over the target: a reader (or a
kill at any moment) sees the old file or the new one, never half of one. Below every package that saves.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from .errors import RubikError


class DiskFullError(RubikError):
    """The disk filled up while saving; the previous checkpoint is intact."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


RESUME_ADVICE = ("the previous checkpoint and weights are intact: free some space, then continue with "
                 "`rubik train --resume RUN_DIR`")


def disk_error(e: OSError, target: Path, advice: str = RESUME_ADVICE) -> RubikError:
    """The one-line error of a failed write; `advice`: what a full disk leaves intact and what to do (a run's
    by default)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full while saving {target}; {advice}")
    return RubikError(f"could not write {target} ({e.strerror or e}); check the folder's permissions and free space")


def atomic_write(path: Path, write: Callable[[Path], None], advice: str = RESUME_ADVICE) -> None:
    """Write through `write(tmp_path)`, fsync, then rename over `path`: readers see old or new, never half.
    `advice`: as `disk_error`'s."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path, advice) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
