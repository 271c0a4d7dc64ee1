"""The file-level half of the SQLite bus: how a connection is opened, the versioned schema,
the process-liveness tokens, and the SQL the bus, its producers and its consumers share.

Kept apart from `sqlite.py` (the bus and its producers) and `sqlite_consumer.py` (group
members) so each reads on its own.

Tables (schema version 1):
- `topics`: name -> id and partition count (fixed at creation, as on Kafka);
- `partitions`: per partition, the log start and the log end; offsets are allocated from
  `log_end` inside the writing transaction, so two producer processes never collide;
- `records`: a rowid table (values are BLOBs up to tens of MiB, a bad fit for WITHOUT ROWID)
  with a unique index on (topic, partition, offset);
- `groups`: a generation per consumer group, bumped by every change a member must react to
  (a member joins, leaves or is declared dead, a partition is released, a topic appears): a
  member re-reads the group only when it moved;
- `members`: group members in join order (`seq`), their subscription, heartbeat and the
  liveness token of the process (bus instance) they live in;
- `owners`: who holds each partition now (at most one member per partition and group);
- `commits`: committed offsets per group and partition;
- `registrations`: the topics (by name: a member may subscribe before a topic exists) a
  group subscribed to or committed on, which keep their records until the group is past
  them (`truncate_consumed`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from i2d_segments.bus.base import BusError, TopicPartition

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
# 16 KiB pages rather than SQLite's 4 KiB: a 50 KB image payload is a chain of 4 overflow
# pages instead of 13, and writing, checkpointing and deleting it costs about a third less
# CPU (measured with bench/sqlite_bus.py-like loads); small records barely notice. Only takes
# effect when the file is created.
_PAGE_SIZE = 16384
# A checkpoint every 32 MiB of WAL instead of SQLite's 4 MiB: image payloads fill 4 MiB in a
# few dozen records, and each checkpoint syncs the database file. After a checkpoint the WAL
# is cut back to 64 MiB, so it does not keep the size of its largest burst.
_WAL_AUTOCHECKPOINT_BYTES = 32 * 1024 * 1024
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# `truncate_consumed` holds the write lock for about this long per transaction.
TRUNCATE_STEP_S = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    log_start INTEGER NOT NULL,
    log_end INTEGER NOT NULL,
    PRIMARY KEY (topic_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    topic_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    ofs INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_position ON records (topic_id, part, ofs);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL,
    member_id TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL,
    topics TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS members_group ON members (group_name);
CREATE TABLE IF NOT EXISTS owners (
    group_name TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_name, topic_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits (
    group_name TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    ofs INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS registrations (
    group_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    PRIMARY KEY (group_name, topic)
) WITHOUT ROWID;
"""


# -- connections ----------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def bus_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """SQLite's errors (busy past the timeout, disk full, a connection closed by
    `SqliteBus.close`) leave the bus as BusError, as the port promises. Only for code that
    calls no listener: a listener's own sqlite3 errors (the embedded index is SQLite too)
    must reach the caller as they are."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as e:
            raise BusError(f"bus file error: {e}") from e

    return wrapper


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: BEGIN IMMEDIATE for every
    write, so a writer waits for the lock up front instead of failing on upgrade). Usable
    from any thread; each user guards its own connection with a lock."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    # NORMAL in WAL mode: a commit survives a process kill; a power loss may drop the last
    # transactions (never corrupt the file).
    conn.execute("PRAGMA synchronous = NORMAL")
    _set_autocheckpoint(conn)
    conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
    return conn


def _set_autocheckpoint(conn: sqlite3.Connection) -> None:
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_BYTES // int(page_size)}")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One snapshot for several SELECTs (a partition's bounds and its records agree)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")


def prepare(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode and create or check the schema. Safe when several processes
    open a new file at once: the mode switch is retried while another holds the file, and
    the schema is created inside BEGIN IMMEDIATE after re-reading the version."""
    conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise BusError(f"cannot put the bus file in WAL mode: {e}") from e
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise BusError(f"the bus file cannot use WAL mode (journal_mode is {mode})")
    _set_autocheckpoint(conn)  # the page size is the file's now
    if _user_version(conn) == SCHEMA_VERSION:
        return
    with write_transaction(conn):
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise BusError(
                f"the bus file has schema version {version}, newer than this program's "
                f"{SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


# -- process liveness -----------------------------------------------------------------------


class LivenessToken:
    """Proof that a bus instance (and so its process) is alive: `<dir>/<token>.lock`, held
    with flock(LOCK_EX) for the instance's lifetime. The kernel drops the lock when the
    process dies however it dies (SIGKILL included), so other members learn of a death at
    their next check instead of after a session timeout.

    flock belongs to an open file description, so another instance in the same process
    (another descriptor) sees the lock held too. A child made by fork() shares the
    descriptor and keeps the lock while it lives: start workers with spawn or forkserver.
    The file is created under a temporary name and renamed once locked, so a `.lock` file
    that can be locked always belongs to a process that is gone. Needs a local filesystem
    (flock over NFS is not reliable)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.token = uuid.uuid4().hex
        self.path = token_path(directory, self.token)
        temporary = directory / f".{self.token}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(temporary, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        sweep_tokens(directory, keep=self.token)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)  # releases the lock
        self._fd = None


def token_path(directory: Path, token: str) -> Path:
    return directory / f"{token}.lock"


def token_alive(directory: Path, token: str) -> bool:
    """Whether the instance holding `token` is alive. A token that can be locked belongs to
    a process that is gone: its file is removed while we hold it."""
    path = token_path(directory, token)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # released on close, or removed by whoever found it dead
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)


def sweep_tokens(directory: Path, keep: str, stale_after: float = 60.0) -> None:
    """Remove the token files of dead processes (producer-only processes, such as `enqueue`,
    leave no member row for anyone to find them by), and temporary files a process died
    between creating and renaming."""
    now = time.time()
    for entry in directory.iterdir():
        name = entry.name
        if name.endswith(".lock") and name != f"{keep}.lock":
            token_alive(directory, name[: -len(".lock")])
        elif name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > stale_after:
                    entry.unlink()


# -- shared queries -------------------------------------------------------------------------


def bump_generation(conn: sqlite3.Connection, group: str | None = None) -> None:
    """Tell the members of `group` (of every group when None) to look at the group again."""
    if group is None:
        conn.execute("UPDATE groups SET generation = generation + 1")
    else:
        conn.execute(
            "INSERT INTO groups (name, generation) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET generation = generation + 1",
            (group,),
        )


def generation(conn: sqlite3.Connection, group: str) -> int:
    row = conn.execute("SELECT generation FROM groups WHERE name = ?", (group,)).fetchone()
    return 0 if row is None else int(row[0])


def topic_row(conn: sqlite3.Connection, name: str) -> tuple[int, int] | None:
    """(topic id, partition count), or None for an unknown topic."""
    row = conn.execute("SELECT id, partitions FROM topics WHERE name = ?", (name,)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def range_assignment(
    me: str,
    members: Sequence[tuple[str, Sequence[str]]],
    topics: dict[str, tuple[int, int]],
) -> set[TopicPartition]:
    """What `me` should own: per topic, its partitions split in contiguous ranges over the
    members subscribed to it, in join order (`members` comes sorted by join order); the
    first members get one more when the count does not divide. Topics not created yet are
    assigned once they exist."""
    target: set[TopicPartition] = set()
    subscribed = {t for member, subs in members if member == me for t in subs}
    for topic in sorted(subscribed):
        if topic not in topics:
            continue
        count = topics[topic][1]
        readers = [member for member, subs in members if topic in subs]
        share, extra = divmod(count, len(readers))
        index = readers.index(me)
        first = index * share + min(index, extra)
        mine = share + (1 if index < extra else 0)
        target.update(TopicPartition(topic, p) for p in range(first, first + mine))
    return target


def encode_topics(topics: Sequence[str]) -> str:
    return json.dumps(sorted(set(topics)))


def decode_topics(text: str) -> list[str]:
    return list(json.loads(text))


def truncate_consumed(conn: sqlite3.Connection) -> int:
    """Drop what every group registered on a topic has committed past (see
    `EmbeddedBus.truncate_consumed`). Deleting a 50 KB record costs about as much as writing
    it, so the work is cut into transactions of about TRUNCATE_STEP_S each (the chunk adapts
    to the record sizes) instead of holding the write lock for the whole backlog; with
    nothing to drop, it only reads (callers may run it every tick). Freed pages go to
    SQLite's free list and are reused by later records: the file stops growing without a
    VACUUM."""
    dropped = 0
    chunk = 1024
    while True:
        with read_transaction(conn):
            if not _truncation_plan(conn, chunk):
                return dropped
        started = time.monotonic()
        step = 0
        with write_transaction(conn):
            # Planned again under the write lock: another process may have moved things.
            for topic_id, part, start, new_start in _truncation_plan(conn, chunk):
                conn.execute(
                    "DELETE FROM records WHERE topic_id = ? AND part = ? AND ofs < ?",
                    (topic_id, part, new_start),
                )
                conn.execute(
                    "UPDATE partitions SET log_start = ? WHERE topic_id = ? AND part = ?",
                    (new_start, topic_id, part),
                )
                step += new_start - start  # offsets are dense between start and end
        if step == 0:
            return dropped
        dropped += step
        elapsed = time.monotonic() - started
        if elapsed > TRUNCATE_STEP_S:
            chunk = max(16, chunk // 2)
        elif elapsed < TRUNCATE_STEP_S / 4:
            chunk = min(1 << 16, chunk * 2)


def _truncation_plan(conn: sqlite3.Connection, budget: int) -> list[tuple[int, int, int, int]]:
    """(topic id, partition, log start, new log start) for up to `budget` consumed records."""
    # By topic name: a member may subscribe before its topic exists.
    registered: dict[int, set[str]] = {}
    for group, topic_id in conn.execute(
        "SELECT r.group_name, t.id FROM registrations r JOIN topics t ON t.name = r.topic"
    ):
        registered.setdefault(int(topic_id), set()).add(str(group))
    plan: list[tuple[int, int, int, int]] = []
    for topic_id, groups in registered.items():
        committed: dict[int, dict[str, int]] = {}
        for group, part, offset in conn.execute(
            "SELECT group_name, part, ofs FROM commits WHERE topic_id = ?", (topic_id,)
        ):
            if group in groups:
                committed.setdefault(int(part), {})[str(group)] = int(offset)
        bounds = conn.execute(
            "SELECT part, log_start, log_end FROM partitions WHERE topic_id = ?", (topic_id,)
        ).fetchall()
        for part, start, end in bounds:
            offsets = committed.get(int(part), {})
            if len(offsets) < len(groups):
                continue  # a group that never committed here reads from the start
            new_start = min(min(offsets.values()), int(end), int(start) + budget)
            if new_start <= start:
                continue
            plan.append((topic_id, int(part), int(start), new_start))
            budget -= new_start - int(start)
            if budget <= 0:
                return plan
    return plan
