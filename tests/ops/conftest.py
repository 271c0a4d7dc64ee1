"""One dataset location per mode: a local folder + SQLite, and S3 (moto) + PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from i2d_segments.connect import open_index, open_store
from i2d_segments.index import Index
from i2d_segments.store import SegmentStore
from tests.servers.postgres import PostgresServer
from tests.servers.s3 import S3Server, s3_env


@dataclass
class Backend:
    kind: str
    store: SegmentStore
    index: Index
    index_url: str
    store_flags: list[str]  # how the CLI names the store
    new_index_url: Callable[[], str]  # a new, empty index

    def flags(self, index_url: str | None = None) -> list[str]:
        return [*self.store_flags, "--index_url", index_url or self.index_url]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A raw write under the port (`?` placeholders), to damage the index on purpose."""
        if self.kind == "local":
            with contextlib.closing(sqlite3.connect(self.index_url)) as conn, conn:
                conn.execute(sql, params)
        else:
            with psycopg.connect(self.index_url) as pg:
                pg.execute(sql.replace("?", "%s"), params)


def _new_database(server: PostgresServer) -> str:
    name = f"test_{uuid.uuid4().hex}"
    with server.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return server.dsn(name)


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "local":
        root = tmp_path / "store"
        counter = iter(range(1_000_000))
        url = str(tmp_path / "index.sqlite")
        store = open_store(str(root))
        flags = ["--store_url", str(root)]

        def new_index_url() -> str:
            return str(tmp_path / f"rebuilt-{next(counter)}.sqlite")

    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url = request.getfixturevalue("postgres_dsn")
        for key, value in s3_env(server).items():
            monkeypatch.setenv(key, value)
        store = open_store(f"s3://{bucket}/ds/", s3_endpoint_url=server.endpoint_url)
        flags = ["--store_url", f"s3://{bucket}/ds/", "--s3_endpoint_url", server.endpoint_url]

        def new_index_url() -> str:
            return _new_database(pg)

    index = open_index(url)
    index.migrate()
    yield Backend(request.param, store, index, url, flags, new_index_url)
    index.close()
    store.close()
