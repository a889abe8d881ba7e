"""A journal rewritten as the state it leads to: ``compact``.

A journal grows with every write, and a replay applies them all: a job's reservation,
arm, settle and counters are many writes with conditions and update expressions. The
state they lead to is smaller: one line per item of the table (read from moto's table
itself), one put line per S3 object (copied from the journal, where the ``Index``
says its last put is), and one ``add`` per message still queued. ``compact`` writes that
beside the journal, syncs it, and renames it over the journal: a process killed on the
way leaves the old journal whole.

``state_dir`` compacts after a replay (the re-sent messages are journaled into the new
file) and when the process ends, if the journal has grown to twice its compacted size,
under the lock of ``moto_fixes`` so that no write comes in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from chatbatch.local.journal import backends
from chatbatch.local.journal.images import Change, key_of
from chatbatch.local.journal.index import Index
from chatbatch.local.journal.journal import Journal


def _items(table: str) -> Iterator[Change]:
    """The table's items (read from moto, not through its API: the caller may hold the
    lock that moto's request handling takes)."""
    moto_table = backends.dynamodb().get_table(table)
    for item in moto_table.all_items():
        attrs = item.to_json()["Attributes"]
        yield table, key_of(moto_table, attrs), attrs


def compact(
    path: Path, index: Index, table: str, messages: Callable[[Journal], object] | None = None
) -> Journal:
    """Rewrite the journal at ``path`` as the state it leads to; ``index``: its index.
    ``messages`` journals the queued messages (default: the index's, as they are).
    Returns the new journal, open for appending."""
    partial = path.with_name(path.name + ".next")
    snapshot = Journal(partial, truncate=True)
    try:
        for change in _items(table):
            snapshot.ddb([change])
        with path.open("rb") as old:
            for (bucket, key), (offset, length) in index.objects.items():
                old.seek(offset)
                snapshot.s3_put_line(bucket, key, old.read(length))
        if messages:
            messages(snapshot)
        else:
            for record in index.messages.values():
                snapshot.add({k: v for k, v in record.items() if k != "was"})
    finally:
        snapshot.close()
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a reboot
    finally:
        os.close(directory)
    return Journal(path, snapshot.index)
