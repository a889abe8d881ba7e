"""Files only their owner can read: the one way chatbatch creates the files it writes on
this machine (answers, errors, costs, summaries, the local state's journal, logs).

A file is created with mode 0600 by ``os.open`` itself, so there is no moment when it
exists readable by others (a ``chmod`` after writing leaves one). A file that was already
there with wider bits (an earlier version's output) is narrowed on its descriptor before
anything is written to it. Directories chatbatch creates are 0700; one that exists is
left as its owner made it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_fd(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags)``, creating the file 0600 and narrowing an existing one."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` through ``private_fd``; text modes default to UTF-8."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    return open(path, mode, opener=private_fd, **kwargs)


def private_dir(path: Path) -> Path:
    """``path`` and its missing parents, each created 0700 (existing ones are untouched)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)  # the umask only narrows it
    return path
