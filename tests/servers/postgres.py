"""Pytest fixtures for the PostgreSQL test server: Debian's binaries on a free loopback port.

`postgres_server` (session): one throwaway cluster in a temp folder, trust auth, fsync off (a
test cluster is never worth an fsync). PostgreSQL refuses to run as root, so when the tests run
as root the cluster is created and run as the `postgres` OS user; `setpriv` switches user and
then execs, so the PID we hold is the postmaster's own and signals reach it directly.

`postgres_dsn` (function): a fresh database per test, dropped afterwards.

Fault tests use `PostgresServer.stop()` / `start()` / `restart()` / `kill()`; the port and data
stay the same across a restart, so clients reconnect to the same DSN.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.servers.proc import ServerProcess, free_port, wait_until

PG_OS_USER = "postgres"
DB_USER = "postgres"


def find_pg_bin() -> Path:
    """The bin folder of the highest installed PostgreSQL major version."""
    candidates: list[tuple[int, Path]] = []
    for folder in glob.glob("/usr/lib/postgresql/*/bin"):
        version = Path(folder).parent.name
        path = Path(folder)
        if re.fullmatch(r"\d+", version) and all(
            (path / exe).exists() for exe in ("initdb", "postgres")
        ):
            candidates.append((int(version), path))
    if not candidates:
        pytest.fail(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
            "install Debian's `postgresql` package (`make servers` does it)",
            pytrace=False,
        )
    return max(candidates)[1]


def _as_pg_user() -> list[str]:
    """argv prefix that runs a command as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        pytest.fail(f"running as root but there is no {PG_OS_USER!r} OS user", pytrace=False)
    return ["setpriv", f"--reuid={PG_OS_USER}", f"--regid={PG_OS_USER}", "--init-groups", "--"]


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    root: Path
    bin_dir: Path
    process: ServerProcess = field(repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def alive(self) -> bool:
        return self.process.alive()

    def start(self, timeout: float = 60.0) -> None:
        if self.alive():
            return
        self.process.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def accepts() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"postgres exited during startup:\n{self.process.log_tail()}")
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
            except psycopg.OperationalError:
                return False
            return True

        try:
            wait_until(accepts, timeout, f"postgres on {self.host}:{self.port}", interval=0.1)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.process.log_tail()}") from e

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down: `fast` (SIGINT: roll back sessions, clean shutdown) or `immediate`
        (SIGQUIT: no checkpoint, crash recovery at next start). Smart (SIGTERM) would wait for
        every client to disconnect, which a test holding a connection never does."""
        if not self.alive():
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self.process.signal(sig)
        proc = self.process.proc
        assert proc is not None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (one process group): a hard crash."""
        self.process.kill()

    def restart(self, mode: str = "fast", timeout: float = 60.0) -> None:
        self.stop(mode)
        self.start(timeout)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10)


def _init_cluster(bin_dir: Path, root: Path) -> None:
    prefix = _as_pg_user()
    if prefix:
        pw = pwd.getpwnam(PG_OS_USER)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    (root / "sock").mkdir()
    if prefix:
        os.chown(root / "sock", pw.pw_uid, pw.pw_gid)
    argv = [
        *prefix,
        str(bin_dir / "initdb"),
        "-D",
        str(root / "data"),
        "-U",
        DB_USER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=root, check=False)
    if done.returncode != 0:
        pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def postgres_argv(bin_dir: Path, root: Path, port: int, settings: Sequence[str] = ()) -> list[str]:
    """The command of a throwaway cluster in `root` on 127.0.0.1:`port`: durability off (the
    data is thrown away), plus `settings` (NAME=VALUE)."""
    argv = [
        *_as_pg_user(),
        str(bin_dir / "postgres"),
        "-D",
        str(root / "data"),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(root / "sock"),
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
    ]
    for setting in settings:
        argv += ["-c", setting]
    return argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_pg_bin()
    root = Path(tempfile.mkdtemp(prefix="i2d-pg-"))
    server: PostgresServer | None = None
    try:
        _init_cluster(bin_dir, root)
        port = free_port()
        # The log sits beside the data (root-owned is fine: we open it and hand over the fd).
        process = ServerProcess(
            postgres_argv(bin_dir, root, port), log_path=root / "postgres.log", cwd=root
        )
        server = PostgresServer("127.0.0.1", port, DB_USER, root, bin_dir, process)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
            server.kill()  # no-op unless the clean shutdown timed out
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; its DSN."""
    postgres_server.start()  # a previous fault test may have left it stopped
    name = f"test_{uuid.uuid4().hex}"
    with postgres_server.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.dsn(name)
    # The cluster is thrown away at the end anyway; dropping keeps a long session's disk small.
    if postgres_server.alive():
        with contextlib.suppress(psycopg.OperationalError), postgres_server.admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
