"""Fault injection: real appender processes over the real broker, S3 and Postgres, crashed,
frozen and starved round after round, with the invariants of `checker.py` checked after each.

A round produces fresh numbered records and does one thing to the appender or what it stands
on, then drains (a clean appender commits every acknowledged record) and checks everything:

    <crash point>     SIGKILL at that named point (I2D_CRASH_AT=<point>:<n>), n-th arrival
    random_kill       SIGKILL at a random moment, wherever the appender is
    zombie            SIGSTOP after publishing an object, past the session timeout; a second
                      appender takes the partition and commits; SIGCONT: the first one's commit
                      is fenced, its object never indexed, and gc lists it
    broker_restart    the Tansu broker (log in S3) restarted under a running appender
    postgres_restart  the index database restarted (or crashed) under a running appender
    s3_faults         S3 answers 500/503, loses replies to writes that landed, hangs, is slow

`CHAOS_ROUNDS` (default: one round of each kind) sets how many rounds; `make chaos` runs 50.
The summary (rounds per kind, invariants held, faults injected) is printed at the end of the
session and written to `CHAOS_SUMMARY` when that names a file.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from i2d_appender.crashpoints import POINTS
from i2d_segments.bus.kafka import KafkaBus
from i2d_segments.index import Index
from i2d_segments.index.postgres import PostgresIndex
from i2d_segments.naming import object_name_of
from i2d_segments.ops.gc import find_garbage
from i2d_segments.store.s3 import S3Store
from tests.chaos.checker import Checker, Snapshot
from tests.chaos.cluster import (
    APPEND_TOPIC,
    BIN,
    PARTITIONS,
    Appenders,
    ClosedEvents,
    S3Broker,
    appender_env,
    appenders,
    is_stopped,
    log_of,
    owning,
    owns_all,
    wait_drained,
    wait_exit,
)
from tests.chaos.s3proxy import FaultPlan, FaultProxy, fault_proxy
from tests.chaos.summary import SEED, SUMMARY
from tests.chaos.workload import Ledger, Workload
from tests.servers.kafka import KAFKA_TEST_CONFIG
from tests.servers.postgres import PostgresServer
from tests.servers.proc import ServerProcess, wait_until
from tests.servers.s3 import S3Server, s3_client, s3_env

ALL_KINDS = (*POINTS, "random_kill", "zombie", "broker_restart", "postgres_restart", "s3_faults")
# `make test` runs one round of each of these (about a minute); `make chaos` sets CHAOS_ROUNDS
# and cycles through every kind, shuffled. CHAOS_KINDS=zombie,s3_faults narrows either.
SHORT_KINDS = (
    "segment_write",
    "after_index_commit",
    "zombie",
    "broker_restart",
    "postgres_restart",
    "s3_faults",
)
_CHOSEN = tuple(k for k in (os.environ.get("CHAOS_KINDS") or "").split(",") if k)
KINDS = _CHOSEN or ALL_KINDS
ROUNDS = int(os.environ.get("CHAOS_ROUNDS") or 0)  # 0: the short schedule
RECORDS_PER_ROUND = 24
# Generous: two shared cores, several test runs at once.
DRAIN_TIMEOUT = 180.0
CRASH_TIMEOUT = 120.0


@dataclass
class Bench:
    tmp_path: Path
    s3: S3Server
    broker: S3Broker
    proxy: FaultProxy
    pg: PostgresServer
    index: Index
    ledger: Ledger
    workload: Workload
    checker: Checker
    apps: Appenders
    rng: random.Random

    def produce(
        self, count: int = RECORDS_PER_ROUND, big: int = 0, partition: int | None = None
    ) -> None:
        self.workload.produce(count, big=big, partition=partition)
        SUMMARY.records += count + big

    def check(self) -> Snapshot:
        snap = self.checker.check(drained=True)
        SUMMARY.checks = self.checker.checks
        SUMMARY.held = Counter(self.checker.held)
        SUMMARY.garbage_seen = max(SUMMARY.garbage_seen, len(snap.garbage))
        SUMMARY.abandoned_uploads_seen = max(
            SUMMARY.abandoned_uploads_seen, len(snap.abandoned_uploads)
        )
        SUMMARY.next_offsets = snap.next_offsets
        SUMMARY.faults = Counter(self.proxy.injected)
        return snap

    def drain(self, what: str, running: list[ServerProcess] | None = None) -> None:
        """Commit every acknowledged record (with a fresh appender unless `running` is given),
        check every invariant, stop the appenders cleanly."""
        procs = running or [self.apps.start()]
        if running is None:
            # Up and owning everything before judging (and before it may be asked to stop).
            wait_until(
                lambda: owns_all(procs[0]), DRAIN_TIMEOUT, f"a fresh appender to own ({what})"
            )
        wait_drained(self.index, self.ledger, procs, DRAIN_TIMEOUT, what)
        for p in procs:
            p.signal(signal.SIGTERM)
        for p in procs:
            code = wait_exit(p, 60)
            assert code == 0, f"clean stop exited {code}:\n{p.log_tail(40)}"
        self.check()


@pytest.fixture
def bench(
    tmp_path: Path, s3_server: S3Server, postgres_server: PostgresServer, postgres_dsn: str
) -> Iterator[Bench]:
    rng = random.Random(SEED)
    broker = S3Broker(tmp_path, s3_server, f"chaos-broker-{rng.randrange(1 << 32):08x}")
    bucket = f"chaos-data-{rng.randrange(1 << 32):08x}"
    admin = s3_client(s3_server)
    admin.create_bucket(Bucket=bucket)
    bus = KafkaBus(broker.bootstrap, config=dict(KAFKA_TEST_CONFIG))
    bus.create_topics({APPEND_TOPIC: PARTITIONS, "SEGMENT_CLOSED": 1, "urls": 1})
    bus.close()
    index = PostgresIndex.open(postgres_dsn)
    store = S3Store(bucket, client=admin)
    ledger = Ledger()
    producer = KafkaBus(broker.bootstrap, config=dict(KAFKA_TEST_CONFIG)).producer()
    announcements = ClosedEvents(broker.bootstrap)
    started = time.monotonic()
    try:
        with fault_proxy(s3_server.endpoint_url, seed=SEED) as proxy:
            env = appender_env(
                broker.bootstrap, s3_server, proxy.endpoint_url, bucket, postgres_dsn
            )
            with appenders(tmp_path, env) as apps:
                yield Bench(
                    tmp_path,
                    s3_server,
                    broker,
                    proxy,
                    postgres_server,
                    index,
                    ledger,
                    Workload(producer, APPEND_TOPIC, ledger, seed=SEED, partitions=PARTITIONS),
                    Checker(
                        index, store, ledger, APPEND_TOPIC, PARTITIONS, tmp_path, announcements
                    ),
                    apps,
                    rng,
                )
    finally:
        SUMMARY.seconds += time.monotonic() - started
        producer.close()
        announcements.close()
        index.close()
        broker.close()
        postgres_server.start()  # as the next test expects it, whatever happened here


# ---------------------------------------------------------------------------------- rounds


def crash_round(b: Bench, point: str) -> None:
    """SIGKILL at a named point: the n-th time the appender reaches it."""
    nth = b.rng.randint(1, 2)
    # Every other segment_write round (the first included) crashes mid-multipart.
    big = 3 if point == "segment_write" and SUMMARY.rounds[point] % 2 == 0 else 0
    proc = b.apps.start(crash_at=f"{point}:{nth if not big else 3}")
    if big:
        # All in partition 0, the big ones first: the third item written passes the 8 MiB
        # part, so the crash leaves a multipart upload with a part sent, never completed.
        b.produce(RECORDS_PER_ROUND // 2, big=big, partition=0)
    else:
        b.produce()
    code = wait_exit(proc, CRASH_TIMEOUT)
    log = log_of(proc)
    assert code == -signal.SIGKILL, f"exit {code}, not the crash at {point}:\n{proc.log_tail()}"
    assert f"crash point {point} reached ({nth if not big else 3})" in log, proc.log_tail()
    if big:
        uploads = [u.name for u in b.checker.store.list_incomplete_uploads()]
        assert any(n.startswith("segments/p00000/") for n in uploads), uploads
    SUMMARY.crashes[point] += 1
    b.checker.check()  # at once, before anyone cleans up after the dead appender
    b.drain(point)


def random_kill_round(b: Bench) -> None:
    proc = b.apps.start()
    b.produce()
    time.sleep(b.rng.uniform(0.0, 3.0))
    proc.kill()
    SUMMARY.crashes["random"] += 1
    b.checker.check()
    b.drain("random_kill")


def zombie_round(b: Bench) -> None:
    """Freeze an appender between publishing an object and committing it, past its session;
    a second appender takes over and commits; thaw the first: its commit must be refused."""
    store = b.checker.store
    earlier = {info.name for info in store.list("segments/")}
    zombie = b.apps.start(crash_at="after_complete:1:STOP")
    b.produce()
    wait_until(lambda: is_stopped(zombie), CRASH_TIMEOUT, "the zombie to freeze itself")
    committed = {object_name_of(s.segment_id) for s in b.index.segments()}
    # What it published and has not committed: the object it froze over.
    orphans = [i.name for i in store.list("segments/") if i.name not in earlier | committed]
    assert len(orphans) == 1, f"the zombie froze with {orphans} published, uncommitted"
    leases = {p: b.index.partition(APPEND_TOPIC, p) for p in range(PARTITIONS)}
    # The heir's join completes once the frozen zombie's session has expired.
    heir = b.apps.start()
    wait_drained(b.index, b.ledger, [heir], DRAIN_TIMEOUT, "the heir of the zombie")
    for p, lease in leases.items():
        row = b.index.partition(APPEND_TOPIC, p)
        assert lease is not None and row is not None and row.epoch > lease.epoch, (p, row)
    marks = {id(p): len(owning(p)) for p in (zombie, heir)}
    zombie.signal(signal.SIGCONT)
    wait_until(
        lambda: "fenced, letting" in log_of(zombie),
        DRAIN_TIMEOUT,
        "the zombie's commit to be fenced",
    )
    SUMMARY.fenced += 1
    # The thawed zombie rejoins: a rebalance shares the partitions between the two. Tansu
    # 0.6.0 wedges a group whose leader leaves during a join (later members wait on SyncGroup
    # forever), so members are stopped only once the group is stable, one at a time.
    for proc in (zombie, heir):

        def reassigned(proc: ServerProcess = proc) -> bool:
            return len(owning(proc)) > marks[id(proc)]

        wait_until(reassigned, DRAIN_TIMEOUT, "a shared assignment")
    b.produce()  # both own a partition now: everything lands exactly once still
    wait_drained(b.index, b.ledger, [zombie, heir], DRAIN_TIMEOUT, "zombie and heir")
    mark = len(owning(heir))
    zombie.signal(signal.SIGTERM)
    assert wait_exit(zombie, 60) == 0, zombie.log_tail()
    wait_until(lambda: len(owning(heir)) >= mark + PARTITIONS, DRAIN_TIMEOUT, "the heir to own all")
    heir.signal(signal.SIGTERM)
    assert wait_exit(heir, 60) == 0, heir.log_tail()
    b.check()
    committed = {object_name_of(s.segment_id) for s in b.index.segments()}
    assert orphans[0] not in committed, f"the zombie's object {orphans[0]} is indexed"
    garbage = {g.name for g in find_garbage(store, b.index, grace_seconds=-60)}
    assert orphans[0] in garbage, f"gc does not list the zombie's object {orphans[0]}"


def broker_restart_round(b: Bench) -> None:
    proc = b.apps.start()
    b.produce(RECORDS_PER_ROUND // 2)
    time.sleep(b.rng.uniform(0.0, 2.0))
    b.broker.restart()
    b.produce(RECORDS_PER_ROUND // 2)
    b.drain("broker_restart", running=[proc])


def postgres_restart_round(b: Bench) -> None:
    proc = b.apps.start()
    # The round is about PostgreSQL going away under a running appender: one still starting
    # (connecting, migrating) exits "cannot start" by design, for its orchestrator to restart.
    wait_until(
        lambda: "appender serving" in proc.log_tail(200) or not proc.alive(),
        60,
        "the appender to serve",
    )
    b.produce()
    time.sleep(b.rng.uniform(0.0, 2.0))
    if b.rng.random() < 0.5:
        b.pg.restart("fast")
    else:
        b.pg.kill()  # a crash: no shutdown checkpoint, recovery at start
        b.pg.start()
    b.produce(RECORDS_PER_ROUND // 2)
    b.drain("postgres_restart", running=[proc])


def s3_faults_round(b: Bench) -> None:
    b.proxy.set_plan(FaultPlan(rate=0.5, hang_seconds=1.5, slow_seconds=0.3))
    try:
        # Segments of 3 records: many store calls while the faults are on; every other round
        # starts with a segment of 3 big items (a multipart upload), so parts fail too.
        proc = b.apps.start(env={"I2D_NUMBER_SAMPLE_PER_SHARD": "3"})
        if SUMMARY.rounds["s3_faults"] % 2 == 0:
            b.produce(0, big=3, partition=0)
        b.produce()
        wait_drained(b.index, b.ledger, [proc], DRAIN_TIMEOUT, "under S3 faults")
    finally:
        b.proxy.clear()
    b.drain("s3_faults", running=[proc])


def run_round(b: Bench, kind: str) -> None:
    started = time.monotonic()
    _run_round(b, kind)
    SUMMARY.rounds[kind] += 1
    elapsed = time.monotonic() - started
    SUMMARY.slowest[kind] = max(SUMMARY.slowest.get(kind, 0.0), elapsed)
    print(f"chaos round {sum(SUMMARY.rounds.values())}: {kind} in {elapsed:.1f}s", flush=True)


def _run_round(b: Bench, kind: str) -> None:
    if kind in POINTS:
        crash_round(b, kind)
    elif kind == "random_kill":
        random_kill_round(b)
    elif kind == "zombie":
        zombie_round(b)
    elif kind == "broker_restart":
        broker_restart_round(b)
    elif kind == "postgres_restart":
        postgres_restart_round(b)
    elif kind == "s3_faults":
        s3_faults_round(b)
    else:
        raise ValueError(kind)


def schedule(rng: random.Random) -> list[str]:
    if not ROUNDS:
        return list(_CHOSEN or SHORT_KINDS)
    kinds = list(KINDS)
    out: list[str] = []
    while len(out) < ROUNDS:
        rng.shuffle(kinds)
        out += kinds
    return out[:ROUNDS]


def operator_commands(b: Bench, env: dict[str, str]) -> None:
    """At the end: `img2dataset verify` reads every item back; `img2dataset gc --delete`
    removes every leftover of the run and nothing committed; the invariants still hold."""
    store = b.checker.store
    assert isinstance(store, S3Store)
    where = [
        "--store_url",
        f"s3://{store.bucket}/",
        "--index_url",
        env["I2D_INDEX_URL"],
        "--s3_endpoint_url",
        b.s3.endpoint_url,
    ]
    for argv in (
        ["verify", *where, "--sample", "all"],
        ["gc", *where, "--delete", "--grace_seconds", "0", "--staging_grace_seconds", "0"],
    ):
        done = subprocess.run(
            [str(BIN / "img2dataset"), *argv],
            env={**os.environ, **s3_env(b.s3)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"img2dataset {argv[0]}: {done.stdout}\n{done.stderr}"
    snap = b.check()
    assert not snap.garbage and not snap.abandoned_uploads, (snap.garbage, snap.abandoned_uploads)


@pytest.mark.timeout(max(600, ROUNDS * 150))
def test_chaos_rounds(bench: Bench) -> None:
    kinds = schedule(bench.rng)
    for kind in kinds:
        run_round(bench, kind)
    # Every record produced in the whole run was acknowledged, so each is in the index once.
    assert len(bench.ledger.acked_by_sample()) == len(bench.ledger.sent)
    operator_commands(bench, bench.apps.env)
