"""Functions that feed tests run in killable subprocesses (module level, so spawn finds them)."""

from __future__ import annotations

import os
import time

import pgtide


def follow_to_file(dsn: str, consumer: str, out: str) -> None:
    """Follow public.items, append each delivered id to ``out`` (flushed), then ack."""
    feed = pgtide.Feed(consumer, ["public.items"], dsn=dsn, wakeup="poll", poll_interval=0.02)
    with open(out, "a", encoding="utf-8") as sink:
        for batch in feed.batches(max_changes=7):
            for change in batch:
                assert change.row is not None
                sink.write(f"{change.row['id']}\n")
            sink.flush()
            os.fsync(sink.fileno())
            batch.ack()


def follow_into_table(dsn: str, consumer: str) -> None:
    """Follow public.items and copy each id into public.sink inside batch.transaction()."""
    feed = pgtide.Feed(consumer, ["public.items"], dsn=dsn, wakeup="poll", poll_interval=0.02)
    for batch in feed.batches(max_changes=5):
        with batch.transaction() as conn:
            for change in batch:
                assert change.row is not None
                conn.execute("INSERT INTO sink (id) VALUES (%s)", (change.row["id"],))
            time.sleep(0.01)  # so that a SIGKILL often lands inside the open transaction
