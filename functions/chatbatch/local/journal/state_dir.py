"""A local runtime's state directory: the journal, and which stack it belongs to.

``durable(path, resources)`` runs after ``create_resources``: it replays the journal in
``path`` (if any) into the fresh moto, then journals every write until the block ends
(compacted after a replay and at the end: ``compact``). The directory holds:

- ``journal.jsonl``: the writes (``journal``);
- ``stack.json``: the table, bucket and queues the journal writes to; a state made with
  another config is refused rather than replayed into resources it does not name;
- ``lock``: held while a process uses the directory; a second process is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chatbatch.core.private_files import private_dir, private_fd, private_open
from chatbatch.core.resources import Resources
from chatbatch.local.journal import tap
from chatbatch.local.journal.appender import cut_torn_tail
from chatbatch.local.journal.compact import compact
from chatbatch.local.journal.journal import Journal, records
from chatbatch.local.journal.replay import Replay, ReplayReport
from chatbatch.local.moto_fixes import LOCK

JOURNAL = "journal.jsonl"
STACK = "stack.json"
LOCK_FILE = "lock"


class StateError(RuntimeError):
    """The state directory cannot be used by this run (a message the user can act on)."""


def _stack(resources: Resources) -> dict[str, object]:
    queues = [
        url.rsplit("/", 1)[-1] for url in [*resources.queues.values(), *resources.dlqs.values()]
    ]
    return {"table": resources.table, "bucket": resources.bucket, "queues": sorted(queues)}


def _check_stack(path: Path, resources: Resources) -> None:
    mine = _stack(resources)
    file = path / STACK
    if file.exists():
        theirs = json.loads(file.read_text())
        if theirs != mine:
            raise StateError(
                f"{path} holds the state of another stack (table {theirs.get('table')}, this "
                f"config's {mine['table']}): run with the config it was made with, or start over "
                "with --fresh"
            )
        return
    with private_open(file) as f:
        f.write(json.dumps(mine) + "\n")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = private_fd(path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"{path} is in use by another chatbatch process: wait for it to end, or give "
                "this run another state directory"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def durable(path: Path, resources: Resources) -> Iterator[ReplayReport]:
    """Replay ``path``'s journal into the current (moto) account, then journal every write
    there until the block ends; yields what the replay found. The journal is compacted
    after a replay, and at the end once it has doubled."""
    private_dir(path)
    file = path / JOURNAL
    with _locked(path):
        _check_stack(path, resources)
        cut_torn_tail(file)
        replay = Replay()
        replay.run(records(file))
        replay.restore(file)
        if replay.report.resumed:
            journal = compact(file, replay.index, resources.table, replay.finish)
        else:
            journal = Journal(file)
        compacted = journal.appender.size
        tap.attach(journal)
        try:
            yield replay.report
        finally:
            with LOCK:  # no write between the last line and the compacted state
                tap.detach(journal)
                journal.close()
                if journal.appender.size > 2 * compacted:
                    compact(file, journal.index, resources.table).close()
