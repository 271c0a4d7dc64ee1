"""The consumer side of the SQLite bus: a group member whose membership, partition
ownership and committed offsets live in the bus file, so members in different processes form
one group (see `sqlite.py` for the whole picture).

How a member decides what it owns, in `poll_batch` on its own thread:
1. it looks whether anything moved: the group's generation (bumped by every join, leave,
   death, release and new topic), a heartbeat falling due, or another member looking dead
   (its process's liveness token can be locked, or its heartbeat is older than the session
   timeout). Most polls stop here after one SELECT;
2. otherwise, in one write transaction, it heartbeats (or, if another member declared it
   dead, rejoins and reports `on_lost`), removes the dead members of its group, computes its
   range assignment from the member list, and takes the assigned partitions no live member
   holds. Partitions assigned away are first revoked (`on_revoke`, no lock held), then
   released, which bumps the generation so their next owner takes them: a partition moves
   only after its previous owner let go of it, or died.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from i2d_segments.bus import sqlite_schema as schema
from i2d_segments.bus.base import (
    BusError,
    Consumer,
    Message,
    RebalanceListener,
    TopicPartition,
)
from i2d_segments.bus.sqlite_schema import bus_errors

if TYPE_CHECKING:
    from i2d_segments.bus.sqlite import SqliteBus

log = logging.getLogger(__name__)

# One `poll_batch` returns at most this many value bytes (at least one record).
MAX_BATCH_BYTES = 32 * 1024 * 1024
# Longest gap between two looks for other processes' writes while nothing comes.
IDLE_POLL_INTERVAL = 0.1


class _Plan(NamedTuple):
    lost: list[TopicPartition]
    revoked: list[TopicPartition]
    granted: list[TopicPartition]


class SqliteConsumer(Consumer):
    """A group member. Its state and connection are guarded by its lock; listener calls
    happen with the lock released (they may commit, produce, or take long), while the member
    still owns the partitions concerned."""

    def __init__(self, bus: SqliteBus, group: str) -> None:
        self._bus = bus
        self._group = group
        self._member_id = f"{bus.token}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._conn = schema.connect(bus.path)
        self._joined = False
        self._subscription: list[str] = []
        self._listener = RebalanceListener()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._turn = 0
        self._closed = False
        self._generation = -1  # the group generation the assignment was last planned at
        self._next_heartbeat = 0.0
        self._next_liveness = 0.0
        # How often a waiting poll looks for other processes' writes: `poll_interval` after
        # records came, doubling while none come, up to IDLE_POLL_INTERVAL. An idle member
        # then costs a few queries a second, not fifty; this process's own writes wake it at
        # once whatever the interval (the bus's condition).
        self._look_every = bus.poll_interval

    @bus_errors
    def subscribe(self, topics: Sequence[str], listener: RebalanceListener | None = None) -> None:
        with self._lock:
            self._check_open()
            self._subscription = sorted(set(topics))
            self._listener = listener or RebalanceListener()
            with schema.write_transaction(self._conn) as conn:
                if self._joined:
                    # No row any more: declared dead; the next poll reports it and rejoins.
                    conn.execute(
                        "UPDATE members SET topics = ?, heartbeat = ? WHERE member_id = ?",
                        (schema.encode_topics(topics), time.time(), self._member_id),
                    )
                else:
                    self._insert_member(conn)
                    self._joined = True
                conn.executemany(
                    "INSERT OR IGNORE INTO registrations (group_name, topic) VALUES (?, ?)",
                    [(self._group, t) for t in self._subscription],
                )
                schema.bump_generation(conn, self._group)
        self._bus._notify()

    def poll_batch(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            seen = self._bus._change_seq
            with self._lock:
                self._check_open()
                version = self._data_version()
            self._sync_assignment()
            batch = self._read(max_messages)
            if batch:
                self._look_every = self._bus.poll_interval
                return batch
            if not self._wait(deadline, seen, version):
                return []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self._check_open()
            if tp not in self._positions:
                raise BusError(f"cannot seek {tp}: not assigned to this consumer")
            self._positions[TopicPartition(*tp)] = offset

    @bus_errors
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        with self._lock:
            self._check_open()
            with schema.write_transaction(self._conn) as conn:
                for (topic, partition), offset in offsets.items():
                    topic_id, count = self._bus._topic(topic, conn)
                    if not 0 <= partition < count:
                        raise BusError(f"{topic!r} has no partition {partition}")
                    conn.execute(
                        "INSERT INTO commits (group_name, topic_id, part, ofs) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (group_name, topic_id, part) "
                        "DO UPDATE SET ofs = excluded.ofs",
                        (self._group, topic_id, partition, offset),
                    )
                    conn.execute(
                        "INSERT OR IGNORE INTO registrations (group_name, topic) VALUES (?, ?)",
                        (self._group, topic),
                    )
                if self._joined:  # a member committing is alive: heartbeat for free
                    conn.execute(
                        "UPDATE members SET heartbeat = ? WHERE member_id = ?",
                        (time.time(), self._member_id),
                    )
        self._bus._maybe_truncate()

    @bus_errors
    def low_watermark(self, tp: TopicPartition) -> int:
        with self._lock:
            self._check_open()
            with schema.read_transaction(self._conn) as conn:
                topic_id, count = self._bus._topic(tp.topic, conn)
                if not 0 <= tp.partition < count:
                    raise BusError(f"{tp.topic!r} has no partition {tp.partition}")
                (start,) = conn.execute(
                    "SELECT log_start FROM partitions WHERE topic_id = ? AND part = ?",
                    (topic_id, tp.partition),
                ).fetchone()
                return int(start)

    def assignment(self) -> list[TopicPartition]:
        with self._lock:
            return sorted(self._positions)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        with self._lock:
            self._paused.update(tp for tp in partitions if tp in self._positions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        with self._lock:
            self._paused.difference_update(partitions)
        self._bus._notify()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            owned = sorted(self._positions)
            listener = self._listener
        try:
            if owned:
                listener.on_revoke(owned)
        finally:
            self._leave()

    # -- membership ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("consumer is closed")

    @bus_errors
    def _data_version(self) -> int:
        """Changes whenever another connection (any process) committed to the file."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _insert_member(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO members (group_name, member_id, token, topics, heartbeat) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                self._group,
                self._member_id,
                self._bus.token,
                schema.encode_topics(self._subscription),
                time.time(),
            ),
        )
        self._next_heartbeat = time.monotonic() + self._bus.heartbeat_interval

    @bus_errors
    def _leave(self) -> None:
        """Out of the group (partitions free at once for the others), connection closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._joined:
                    with schema.write_transaction(self._conn) as conn:
                        conn.execute(
                            "DELETE FROM owners WHERE group_name = ? AND member_id = ?",
                            (self._group, self._member_id),
                        )
                        conn.execute("DELETE FROM members WHERE member_id = ?", (self._member_id,))
                        schema.bump_generation(conn, self._group)
            except sqlite3.Error as e:  # the others will find it dead instead
                log.warning("bus %s: %s could not leave its group: %s", self._bus.path, self, e)
            finally:
                self._conn.close()
                self._positions.clear()
                self._paused.clear()
        self._bus._forget_consumer(self)
        self._bus._notify()

    @bus_errors
    def _sync_due(self) -> bool:
        """Whether the assignment must be planned again: the group moved, a heartbeat is due,
        or another member of the group looks dead. Cheap: one SELECT most of the time."""
        if schema.generation(self._conn, self._group) != self._generation:
            return True
        now = time.monotonic()
        if now >= self._next_heartbeat:
            return True
        if now >= self._next_liveness:
            self._next_liveness = now + self._bus.liveness_interval
            return bool(self._dead_members(self._conn))
        return False

    def _dead_members(self, conn: sqlite3.Connection) -> list[str]:
        """The other members of the group whose process is gone (their liveness token can be
        locked) or that did not heartbeat within the session timeout (a hung process)."""
        cutoff = time.time() - self._bus.session_timeout
        verdicts: dict[str, bool] = {self._bus.token: True}
        dead = []
        for member_id, token, heartbeat in conn.execute(
            "SELECT member_id, token, heartbeat FROM members "
            "WHERE group_name = ? AND member_id != ?",
            (self._group, self._member_id),
        ).fetchall():
            alive = verdicts.get(token)
            if alive is None:
                alive = verdicts[token] = schema.token_alive(self._bus.token_directory, token)
            if not alive or heartbeat < cutoff:
                dead.append(str(member_id))
        return dead

    def _sync_assignment(self) -> None:
        """Revoke what the group moved away, then take what it gave us and nobody holds.
        Listener calls happen here, on the polling thread, with no lock held."""
        while True:
            with self._lock:
                self._check_open()
                if not self._joined or not self._sync_due():
                    return
                plan = self._plan()
                listener = self._listener
            if plan.lost:
                listener.on_lost(plan.lost)
            if plan.revoked:
                try:
                    listener.on_revoke(plan.revoked)
                finally:
                    self._release(plan.revoked)
                continue  # the group moved (we released): plan the grants
            if plan.granted:
                seeks = listener.on_assign(plan.granted)
                if seeks:
                    with self._lock:
                        for tp, offset in seeks.items():
                            if tp in self._positions:
                                self._positions[TopicPartition(*tp)] = offset
            return

    @bus_errors
    def _plan(self) -> _Plan:
        """In one write transaction: heartbeat (or rejoin if declared dead), remove the dead
        members of the group, compute this member's range assignment, and, if nothing has to
        be revoked first, take the assigned partitions nobody holds."""
        conn = self._conn
        lost: list[TopicPartition] = []
        granted: dict[TopicPartition, int] = {}
        with schema.write_transaction(conn):
            beat = conn.execute(
                "UPDATE members SET heartbeat = ? WHERE member_id = ?",
                (time.time(), self._member_id),
            )
            if beat.rowcount == 0:
                # Declared dead by another member: what we held is theirs now.
                lost = sorted(self._positions)
                self._insert_member(conn)
                schema.bump_generation(conn, self._group)
            self._reap(conn)
            members = [
                (str(m), schema.decode_topics(t))
                for m, t in conn.execute(
                    "SELECT member_id, topics FROM members WHERE group_name = ? ORDER BY seq",
                    (self._group,),
                )
            ]
            topics: dict[str, tuple[int, int]] = {}
            for name in self._subscription:
                with contextlib.suppress(BusError):  # assigned once it exists
                    topics[name] = self._bus._topic(name, conn)
            target = schema.range_assignment(self._member_id, members, topics)
            held = set() if lost else set(self._positions)
            revoked = sorted(tp for tp in held if tp not in target)
            if not revoked:
                granted = self._grant(conn, sorted(target - held), topics)
            generation = schema.generation(conn, self._group)
        # Committed: now the in-memory state follows.
        if lost:
            self._positions.clear()
            self._paused.clear()
        self._positions.update(granted)
        self._generation = generation
        self._next_heartbeat = time.monotonic() + self._bus.heartbeat_interval
        return _Plan(lost, revoked, sorted(granted))

    def _reap(self, conn: sqlite3.Connection) -> None:
        dead = self._dead_members(conn)
        for member_id in dead:
            conn.execute(
                "DELETE FROM owners WHERE group_name = ? AND member_id = ?",
                (self._group, member_id),
            )
            conn.execute("DELETE FROM members WHERE member_id = ?", (member_id,))
        if dead:
            log.info("bus group %s: members %s are gone", self._group, dead)
            schema.bump_generation(conn, self._group)

    def _grant(
        self,
        conn: sqlite3.Connection,
        wanted: list[TopicPartition],
        topics: dict[str, tuple[int, int]],
    ) -> dict[TopicPartition, int]:
        """Take the wanted partitions no live member holds; their start position is the
        group's committed offset, else the log start."""
        if not wanted:
            return {}
        held = set(
            conn.execute(
                "SELECT o.topic_id, o.part FROM owners o "
                "JOIN members m ON m.member_id = o.member_id WHERE o.group_name = ?",
                (self._group,),
            ).fetchall()
        )
        granted: dict[TopicPartition, int] = {}
        for tp in wanted:
            topic_id = topics[tp.topic][0]
            if (topic_id, tp.partition) in held:
                continue  # its owner has not revoked it yet: wait for its release
            conn.execute(
                "INSERT OR REPLACE INTO owners (group_name, topic_id, part, member_id) "
                "VALUES (?, ?, ?, ?)",
                (self._group, topic_id, tp.partition, self._member_id),
            )
            row = conn.execute(
                "SELECT c.ofs, p.log_start FROM partitions p LEFT JOIN commits c "
                "ON c.group_name = ? AND c.topic_id = p.topic_id AND c.part = p.part "
                "WHERE p.topic_id = ? AND p.part = ?",
                (self._group, topic_id, tp.partition),
            ).fetchone()
            granted[tp] = int(row[0]) if row[0] is not None else int(row[1])
        return granted

    @bus_errors
    def _release(self, partitions: Sequence[TopicPartition]) -> None:
        """Give revoked partitions back, so the member they move to can take them."""
        with self._lock:
            for tp in partitions:
                self._positions.pop(tp, None)
                self._paused.discard(tp)
            if self._closed:
                return
            with schema.write_transaction(self._conn) as conn:
                for tp in partitions:
                    topic_id = self._bus._topic(tp.topic, conn)[0]
                    conn.execute(
                        "DELETE FROM owners WHERE group_name = ? AND topic_id = ? AND part = ? "
                        "AND member_id = ?",
                        (self._group, topic_id, tp.partition, self._member_id),
                    )
                schema.bump_generation(conn, self._group)
        self._bus._notify()

    # -- reading ------------------------------------------------------------------------------

    @bus_errors
    def _read(self, max_messages: int) -> list[Message]:
        """Up to `max_messages` records (and about MAX_BATCH_BYTES) from the readable
        partitions, starting from a different partition each call so a busy one cannot
        starve the others. A position outside the log restarts at the log start."""
        with self._lock:
            self._check_open()
            readable = [tp for tp in sorted(self._positions) if tp not in self._paused]
            if not readable:
                return []
            self._turn = (self._turn + 1) % len(readable)
            batch: list[Message] = []
            size = 0
            with schema.read_transaction(self._conn) as conn:
                for tp in readable[self._turn :] + readable[: self._turn]:
                    topic_id = self._bus._topic(tp.topic, conn)[0]
                    start, end = conn.execute(
                        "SELECT log_start, log_end FROM partitions WHERE topic_id = ? AND part = ?",
                        (topic_id, tp.partition),
                    ).fetchone()
                    position = self._positions[tp]
                    if not start <= position <= end:
                        position = start
                    count = min(end - position, max_messages - len(batch))
                    if count > 0:
                        cursor = conn.execute(
                            "SELECT ofs, timestamp_ms, key, value FROM records "
                            "WHERE topic_id = ? AND part = ? AND ofs >= ? AND ofs < ? "
                            "ORDER BY ofs",
                            (topic_id, tp.partition, position, position + count),
                        )
                        for offset, stamp, key, value in cursor:
                            batch.append(Message(tp.topic, tp.partition, offset, key, value, stamp))
                            position = offset + 1
                            size += len(value)
                            if size >= MAX_BATCH_BYTES:
                                break
                        cursor.close()
                    self._positions[tp] = position
                    if len(batch) >= max_messages or size >= MAX_BATCH_BYTES:
                        break
            return batch

    def _wait(self, deadline: float, seen: int, version: int) -> bool:
        """Sleep until something may have changed: a change in this process (at once), a
        write from another process (seen within `poll_interval`), or a heartbeat or a
        liveness check falling due. False once the deadline passed."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._bus._wait_for_change(seen, min(remaining, self._look_every)):
                return True
            self._look_every = min(
                2 * self._look_every, max(IDLE_POLL_INTERVAL, self._bus.poll_interval)
            )
            with self._lock:
                self._check_open()
                if self._data_version() != version:
                    return True
                now = time.monotonic()
                if self._joined and (now >= self._next_heartbeat or now >= self._next_liveness):
                    return True
