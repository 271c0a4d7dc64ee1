"""Durable Bus in one SQLite file, shared by the processes of one machine.

`img2dataset service` runs the fetcher, appender and materializer as threads of one process
while `img2dataset enqueue` runs, at any time, in other processes: the log between them must
outlive each of them, and no broker is there to hold it. This adapter gives the semantics of
the memory and Kafka adapters (see `base.py`) over `<folder>/bus.sqlite`:

- the file is in WAL mode with `synchronous=NORMAL`: readers never block the writer, and a
  commit survives a process kill; a power loss may drop the last transactions (the file
  stays consistent). Writers take the lock up front (BEGIN IMMEDIATE) and wait up to 60 s
  for it;
- a producer's `produce` only appends to an in-memory buffer (blocking while it holds more
  than 64 MiB or 50k records); a writer thread per producer writes it in batched
  transactions, allocating offsets from each partition's `log_end` inside the transaction,
  then hands the delivery reports to `poll`/`flush`, as on the other adapters;
- a consumer group's members, subscriptions, partition owners and committed offsets are
  tables of the file (`sqlite_consumer.py`). Each member computes its own range assignment
  from the member list (per topic, in join order) inside `poll_batch`; a partition moving
  from A to B is granted to B only once A released it after its `on_revoke` (in one of A's
  polls), or once A is dead. A member's death is known at once from its process-liveness
  token (a file next to the database, flock-ed by the living process: see
  `sqlite_schema.LivenessToken`), or after `session_timeout` without a heartbeat (a hung
  process). A member that finds itself declared dead hears `on_lost` and joins again;
- a consumer waiting for records wakes at once for a producer of the same `SqliteBus`
  instance (a condition variable) and within `poll_interval` for other processes
  (`PRAGMA data_version` tells whether anything was written since the last look);
- `truncate_consumed` drops what every registered group committed past; `commit` has a
  background thread run it at most every `truncate_interval` (5 s), so a service running
  for days keeps a bounded file (SQLite reuses the freed pages; the file is never vacuumed
  in the hot path).

One SqliteBus instance is meant to be shared by all threads of a process: every client has
its own connection, guarded by its own lock; listener callbacks run without any lock held.
SQLite's own errors (busy past the timeout, disk full) surface as BusError.

Files: this one (the bus and its producers), `sqlite_consumer.py` (group members),
`sqlite_schema.py` (connections, schema, liveness tokens, shared SQL).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from i2d_segments.bus import sqlite_schema as schema
from i2d_segments.bus.base import (
    BusError,
    Consumer,
    DeliveryCallback,
    EmbeddedBus,
    Message,
    PartitionLag,
    Producer,
    partition_for_key,
)
from i2d_segments.bus.sqlite_consumer import SqliteConsumer
from i2d_segments.bus.sqlite_schema import bus_errors

log = logging.getLogger(__name__)

# Back-pressure: `produce` blocks while a producer holds this much unwritten.
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
MAX_BUFFERED_RECORDS = 50_000
# One write transaction takes at most this much of the buffer (at least one record).
MAX_WRITE_BYTES = 16 * 1024 * 1024
MAX_WRITE_RECORDS = 10_000
TRUNCATE_INTERVAL_S = 5.0
CLOSE_TIMEOUT_S = 60.0
_RECORD_OVERHEAD = 64  # bytes counted per buffered record besides its key and value


class _Outgoing(NamedTuple):
    """A produced record waiting for the writer thread."""

    topic: str
    topic_id: int
    partition: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    on_delivery: DeliveryCallback | None
    size: int


class SqliteBus(EmbeddedBus):
    """The durable embedded adapter. Thread-safe; share one instance between the loops of a
    process, and open one per process on the same file (on a local filesystem).

    `session_timeout`: a member that neither polled nor committed for that long is dropped
    from its group (its partitions move on, it hears `on_lost` when it polls again). It is
    the fallback for a hung process, so it also bounds the time between two polls and the
    length of a rebalance callback, as Kafka's `max.poll.interval.ms` does; a process that
    died is noticed at once through its liveness token. `poll_interval`: how often a waiting
    consumer looks for records written by other processes."""

    def __init__(
        self, path: str | Path, *, session_timeout: float = 30.0, poll_interval: float = 0.02
    ) -> None:
        if session_timeout <= 0 or poll_interval <= 0:
            raise ValueError("session_timeout and poll_interval must be positive")
        self.path = Path(path)
        self.session_timeout = session_timeout
        self.poll_interval = poll_interval
        # A member heartbeats well within the session timeout, and looks at the other
        # members' liveness tokens often enough that a dead process's partitions move on
        # within a fraction of a second.
        self.heartbeat_interval = min(1.0, session_timeout / 10)
        self.liveness_interval = max(poll_interval, min(0.1, session_timeout / 10))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._admin = schema.connect(self.path)
        except sqlite3.Error as e:
            raise BusError(f"cannot open the bus file {self.path}: {e}") from e
        try:
            schema.prepare(self._admin)
            self._token = schema.LivenessToken(Path(f"{self.path}.members"))
        except sqlite3.Error as e:
            self._admin.close()
            raise BusError(f"cannot use {self.path} as a bus file: {e}") from e
        except BaseException:
            self._admin.close()
            raise
        self._admin_lock = threading.Lock()
        self._topics: dict[str, tuple[int, int]] = {}  # name -> (id, partitions); immutable
        # In-process changes (records written, members gone, partitions released, resumes):
        # consumers of this instance wait on it instead of the poll interval.
        self._changed = threading.Condition(threading.Lock())
        self._change_seq = 0
        self._clients_lock = threading.Lock()
        self._producers: set[_SqliteProducer] = set()
        self._consumers: set[SqliteConsumer] = set()
        self._closed = False
        # `commit` asks for a truncation at most every `truncate_interval` seconds; a
        # background thread does it, so the committing thread does not pay for the deletes.
        self.truncate_interval = TRUNCATE_INTERVAL_S
        self._truncate_lock = threading.Lock()
        self._last_truncate = time.monotonic()
        self._truncate_wanted = threading.Event()
        self._truncator: threading.Thread | None = None

    @property
    def token(self) -> str:
        """This instance's liveness token (its members' `token` column)."""
        return self._token.token

    @property
    def token_directory(self) -> Path:
        return self._token.directory

    # -- admin --------------------------------------------------------------------------------

    @bus_errors
    def create_topic(
        self, name: str, partitions: int, start_offsets: Sequence[int] | None = None
    ) -> None:
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, got {partitions}")
        starts = list(start_offsets) if start_offsets is not None else [0] * partitions
        if len(starts) != partitions or any(s < 0 for s in starts):
            raise ValueError(f"start_offsets must be {partitions} offsets >= 0, got {starts}")
        with self._admin_lock:
            self._check_open()
            conn = self._admin
            with schema.write_transaction(conn):
                existing = schema.topic_row(conn, name)
                if existing is not None:
                    if start_offsets is not None:
                        bounds = conn.execute(
                            "SELECT log_start, log_end FROM partitions WHERE topic_id = ? "
                            "ORDER BY part",
                            (existing[0],),
                        ).fetchall()
                        # An empty log at the asked start is the same log; else another one.
                        if [(s, s) for s in starts] != [tuple(b) for b in bounds]:
                            raise ValueError(
                                f"topic {name!r} already exists with other partitions or "
                                f"offsets; cannot start it at {starts}"
                            )
                    return
                cursor = conn.execute(
                    "INSERT INTO topics (name, partitions) VALUES (?, ?)", (name, partitions)
                )
                topic_id = cursor.lastrowid
                conn.executemany(
                    "INSERT INTO partitions (topic_id, part, log_start, log_end) "
                    "VALUES (?, ?, ?, ?)",
                    [(topic_id, p, s, s) for p, s in enumerate(starts)],
                )
                # Members subscribed before the topic existed get their share now.
                schema.bump_generation(conn)
        self._notify()

    def create_topics(self, topics: Mapping[str, int]) -> None:
        for name, partitions in topics.items():
            self.create_topic(name, partitions)

    def partition_count(self, topic: str) -> int:
        return self._topic(topic)[1]

    @bus_errors
    def lag(self, group_id: str, topic: str) -> list[PartitionLag]:
        with self._admin_lock:
            self._check_open()
            conn = self._admin
            with schema.read_transaction(conn):
                row = schema.topic_row(conn, topic)
                if row is None:
                    raise BusError(f"unknown topic {topic!r}")
                ends = conn.execute(
                    "SELECT part, log_end FROM partitions WHERE topic_id = ? ORDER BY part",
                    (row[0],),
                ).fetchall()
                committed = dict(
                    conn.execute(
                        "SELECT part, ofs FROM commits WHERE group_name = ? AND topic_id = ?",
                        (group_id, row[0]),
                    ).fetchall()
                )
        return [PartitionLag(topic, p, committed.get(p), end) for p, end in ends]

    @bus_errors
    def truncate_consumed(self) -> int:
        with self._admin_lock:
            self._check_open()
            dropped = schema.truncate_consumed(self._admin)
        if dropped:
            log.debug("bus %s: dropped %d consumed records", self.path, dropped)
        return dropped

    # -- clients ------------------------------------------------------------------------------

    def producer(self) -> Producer:
        producer = _SqliteProducer(self)
        with self._clients_lock:
            self._check_open()
            self._producers.add(producer)
        return producer

    @bus_errors
    def consumer(self, group_id: str) -> Consumer:
        with self._clients_lock:
            self._check_open()
            consumer = SqliteConsumer(self, group_id)
            self._consumers.add(consumer)
        return consumer

    def close(self) -> None:
        """Write what producers still buffer, take the open consumers out of their groups
        (without listener calls: they belong to the consumers' own threads), close the
        connections and release the liveness token."""
        with self._clients_lock:
            if self._closed:
                return
            self._closed = True
            producers, consumers = list(self._producers), list(self._consumers)
        try:
            for producer in producers:
                producer._shutdown()
            for consumer in consumers:
                consumer._leave()
        finally:
            self._truncate_wanted.set()
            if self._truncator is not None:
                self._truncator.join()
            with self._admin_lock:
                self._admin.close()
            self._token.release()
            self._notify()

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"bus {self.path} is closed")

    def _forget_producer(self, producer: _SqliteProducer) -> None:
        with self._clients_lock:
            self._producers.discard(producer)

    def _forget_consumer(self, consumer: SqliteConsumer) -> None:
        with self._clients_lock:
            self._consumers.discard(consumer)

    def _topic(self, name: str, conn: sqlite3.Connection | None = None) -> tuple[int, int]:
        """(topic id, partition count); BusError for an unknown topic. Read with `conn` (its
        owner holds its lock, maybe inside a transaction) or the admin connection. Topics
        never change once created, so the answer is kept (this is on every `produce`)."""
        found = self._topics.get(name)
        return found if found is not None else self._load_topic(name, conn)

    @bus_errors
    def _load_topic(self, name: str, conn: sqlite3.Connection | None) -> tuple[int, int]:
        self._check_open()
        if conn is not None:
            found = schema.topic_row(conn, name)
        else:
            with self._admin_lock:
                self._check_open()
                found = schema.topic_row(self._admin, name)
        if found is None:
            raise BusError(f"unknown topic {name!r}")
        self._topics[name] = found
        return found

    def _notify(self) -> None:
        with self._changed:
            self._change_seq += 1
            self._changed.notify_all()

    def _wait_for_change(self, seen: int, timeout: float) -> bool:
        """Wait up to `timeout` for an in-process change after `seen`; whether one came."""
        with self._changed:
            if self._change_seq == seen:
                self._changed.wait(timeout)
            return self._change_seq != seen

    def _maybe_truncate(self) -> None:
        """From `commit`: ask the truncator thread to run, at most every
        `truncate_interval` seconds."""
        now = time.monotonic()
        with self._truncate_lock:
            if self._closed or now - self._last_truncate < self.truncate_interval:
                return
            self._last_truncate = now
            if self._truncator is None:
                self._truncator = threading.Thread(
                    target=self._truncate_loop, name="sqlite-bus-truncate", daemon=True
                )
                self._truncator.start()
        self._truncate_wanted.set()

    def _truncate_loop(self) -> None:
        while True:
            self._truncate_wanted.wait()
            self._truncate_wanted.clear()
            if self._closed:
                return
            try:
                self.truncate_consumed()
            except BusError as e:
                if self._closed:
                    return
                log.warning("bus %s: truncating consumed records failed: %s", self.path, e)


class _SqliteProducer(Producer):
    """Buffers records; a writer thread (started at the first record) writes them in batched
    transactions, then queues their delivery reports for `poll`/`flush`."""

    def __init__(self, bus: SqliteBus) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits for records
        self._room = threading.Condition(self._lock)  # produce waits for buffer room
        self._done = threading.Condition(self._lock)  # flush/poll wait for writes
        self._buffer: deque[_Outgoing] = deque()
        self._unwritten = 0  # buffered or being written
        self._unwritten_bytes = 0
        self._reports: deque[tuple[DeliveryCallback, BusError | None, Message | None]] = deque()
        self._round_robin: dict[str, int] = {}
        self._writer: threading.Thread | None = None
        self._writer_idle = False  # waiting on `_work`: only then does produce notify it
        self._closed = False  # no more produce; the writer exits once the buffer is empty

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        if self._closed:
            raise BusError("producer is closed")
        topic_id, partitions = self._bus._topic(topic)
        size = len(value) + (len(key) if key is not None else 0) + _RECORD_OVERHEAD
        stamp = time.time_ns() // 1_000_000
        with self._lock:
            if key is not None:
                partition = partition_for_key(key, partitions)
            else:
                turn = self._round_robin.get(topic, 0)
                self._round_robin[topic] = turn + 1
                partition = turn % partitions
            while self._unwritten and (
                self._unwritten >= MAX_BUFFERED_RECORDS
                or self._unwritten_bytes + size > MAX_BUFFERED_BYTES
            ):
                if self._closed:
                    break
                self._room.wait()
            if self._closed:
                raise BusError("producer is closed")
            self._buffer.append(
                _Outgoing(topic, topic_id, partition, key, value, stamp, on_delivery, size)
            )
            self._unwritten += 1
            self._unwritten_bytes += size
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="sqlite-bus-writer", daemon=True
                )
                self._writer.start()
            elif self._writer_idle:
                self._work.notify()

    def poll(self, timeout: float = 0.0) -> None:
        if timeout > 0:
            with self._lock:
                self._done.wait_for(lambda: bool(self._reports), timeout)
        self._serve()

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._serve()
            with self._lock:
                if self._reports:
                    continue
                if not self._unwritten:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusError(f"{self._unwritten} records not written after {timeout}s")
                self._done.wait(remaining)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush(CLOSE_TIMEOUT_S)
        finally:
            self._shutdown()

    # -- internals ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Refuse new records, let the writer finish the buffer, and wait for it."""
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._room.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(CLOSE_TIMEOUT_S)
        self._bus._forget_producer(self)

    def _serve(self) -> None:
        # One at a time, outside the lock: a callback may produce, and if one raises the
        # others stay pending for the next poll.
        while True:
            with self._lock:
                if not self._reports:
                    return
                callback, err, msg = self._reports.popleft()
            callback(err, msg)

    def _take(self) -> list[_Outgoing]:
        batch: list[_Outgoing] = []
        size = 0
        while self._buffer and len(batch) < MAX_WRITE_RECORDS:
            if batch and size + self._buffer[0].size > MAX_WRITE_BYTES:
                break
            record = self._buffer.popleft()
            batch.append(record)
            size += record.size
        return batch

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with self._lock:
                    while not self._buffer and not self._closed:
                        self._writer_idle = True
                        self._work.wait()
                        self._writer_idle = False
                    if not self._buffer:
                        return
                    batch = self._take()
                reports: list[tuple[DeliveryCallback, BusError | None, Message | None]] = []
                try:
                    if conn is None:
                        conn = schema.connect(self._bus.path)
                    offsets = self._write(conn, batch)
                    reports = [
                        (
                            r.on_delivery,
                            None,
                            Message(r.topic, r.partition, o, r.key, r.value, r.timestamp_ms),
                        )
                        for r, o in zip(batch, offsets, strict=True)
                        if r.on_delivery is not None
                    ]
                except Exception as e:  # whatever it is, the callers hear it: no silent loss
                    error = BusError(f"cannot write {len(batch)} records to {self._bus.path}: {e}")
                    log.warning("%s", error)
                    reports = [
                        (r.on_delivery, error, None) for r in batch if r.on_delivery is not None
                    ]
                with self._lock:
                    self._reports.extend(reports)
                    self._unwritten -= len(batch)
                    self._unwritten_bytes -= sum(r.size for r in batch)
                    self._room.notify_all()
                    self._done.notify_all()
                self._bus._notify()
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _write(conn: sqlite3.Connection, batch: list[_Outgoing]) -> list[int]:
        """One transaction: offsets continue each partition's `log_end`, in buffer order.
        Returns the records' offsets."""
        ends: dict[tuple[int, int], int] = {}
        rows: list[tuple[int, int, int, int, bytes | None, bytes]] = []
        with schema.write_transaction(conn):
            for r in batch:
                where = (r.topic_id, r.partition)
                offset = ends.get(where)
                if offset is None:
                    row = conn.execute(
                        "SELECT log_end FROM partitions WHERE topic_id = ? AND part = ?", where
                    ).fetchone()
                    if row is None:
                        raise BusError(f"{r.topic}[{r.partition}] is not in the bus file")
                    offset = int(row[0])
                ends[where] = offset + 1
                rows.append((r.topic_id, r.partition, offset, r.timestamp_ms, r.key, r.value))
            conn.executemany(
                "INSERT INTO records (topic_id, part, ofs, timestamp_ms, key, value) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "UPDATE partitions SET log_end = ? WHERE topic_id = ? AND part = ?",
                [(end, t, p) for (t, p), end in ends.items()],
            )
        return [row[2] for row in rows]
