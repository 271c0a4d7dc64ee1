"""The SQLite index's WAL checkpoints, off the commit's path.

With SQLite's automatic checkpoint, the COMMIT that pushes the WAL past 1000 pages copies every
page of the WAL back into the database before it returns: at a million rows that made one
segment's commit in four take 1.3-1.5 s. The writer's connection turns it off
(`wal_autocheckpoint = 0`) and asks this thread for a PASSIVE checkpoint after each write
transaction: it copies what no reader still needs, on its own connection, without blocking the
writer or any reader, so the WAL stays bounded by what one commit writes while readers hold old
snapshots.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class WalCheckpointer:
    """A daemon thread that runs `PRAGMA wal_checkpoint(PASSIVE)` when asked (requests made
    while it runs coalesce into one more)."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        with self._lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"wal-checkpoint {self._path.name}", daemon=True
                )
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        except sqlite3.Error as e:
            log.warning("SQLite index %s: no background checkpoints: %s", self._path, e)
            return
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:  # the next request tries again
                    log.debug("SQLite index %s: checkpoint failed: %s", self._path, e)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            with contextlib.suppress(RuntimeError):
                thread.join(timeout=30)
