"""A file of lines that survives a kill: ``SyncedAppender``.

Each line reaches the kernel when it is appended (one ``os.write`` in the caller's
thread), so a process killed the next instant, even by SIGKILL, loses none of the lines
it appended. A background thread ``fsync``s the file in small groups (after
``every_lines`` lines or ``every_s`` seconds, whichever comes first), so a reboot or a
power cut loses at most the last ``every_s`` seconds. ``close`` syncs once more.

A line cut in the middle (a power cut while writing) is cut off by ``cut_torn_tail``
before the file is read or appended to again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from chatbatch.core.private_files import private_dir, private_fd

EVERY_LINES = 50
EVERY_S = 0.2
_CHUNK = 1 << 16


def cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; returns the bytes cut (0 if none)."""
    if not path.exists():
        return 0
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
        return size - keep


class SyncedAppender:
    """Appends whole lines to ``path`` (a private file, 0600): written at once, fsync'ed in
    small groups."""

    def __init__(
        self,
        path: Path,
        *,
        truncate: bool = False,
        every_lines: int = EVERY_LINES,
        every_s: float = EVERY_S,
    ) -> None:
        private_dir(path.parent)
        if not truncate:
            cut_torn_tail(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self.path = path
        self.lines = 0
        self._fd = private_fd(path, flags)
        self.size = os.fstat(self._fd).st_size  # where the next line starts
        self._every_lines = every_lines
        self._every_s = every_s
        self._unsynced = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._syncer = threading.Thread(target=self._sync_loop, name=f"sync-{path.name}")
        self._syncer.daemon = True
        self._syncer.start()

    def append(self, line: bytes) -> int:
        """Write one line (ending in a newline); returns where it starts in the file.
        Ignored once closed."""
        with self._lock:
            offset = self.size
            if self._closed:
                return offset
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            self.size += len(line)
            self.lines += 1
            self._unsynced += 1
            if self._unsynced >= self._every_lines:
                self._wake.set()
        return offset

    def sync(self) -> None:
        with self._lock:
            if self._closed or not self._unsynced:
                return
            self._unsynced = 0
            fd = self._fd
        os.fsync(fd)  # outside the lock: appends go on while the disk catches up

    def _sync_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self._every_s)
            self._wake.clear()
            self.sync()

    def close(self) -> None:
        """Sync and close; appends after this are dropped."""
        self.sync()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._syncer.join()
        os.fsync(self._fd)
        os.close(self._fd)

    def __enter__(self) -> SyncedAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
