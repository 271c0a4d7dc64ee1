"""Open the adapter a URL names: the one place that maps configuration to implementations.

- store: `s3://bucket/prefix` (boto3) or a local folder (`/path`, `file:///path`);
- index: `postgresql://...` / `postgres://...` or `sqlite:///path` (or a bare `*.sqlite` path);
- bus: Kafka from `ConnectionSettings`; the embedded mode builds its `MemoryBus` itself.

Adapters are imported lazily so the embedded mode never loads what it does not use.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from i2d_segments.bus import Bus
from i2d_segments.index import Index
from i2d_segments.settings import ConnectionSettings
from i2d_segments.store import SegmentStore


def open_store(
    url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None
) -> SegmentStore:
    if url.startswith("s3://"):
        from i2d_segments.store.s3 import S3Store

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"store URL has no bucket: {url!r}")
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Store(parsed.netloc, prefix, endpoint_url=s3_endpoint_url, region_name=s3_region)
    from i2d_segments.store.local import LocalStore

    path = urlparse(url).path if url.startswith("file://") else url
    return LocalStore(Path(path))


def open_index(url: str) -> Index:
    if url.startswith(("postgresql://", "postgres://")):
        from i2d_segments.index.postgres import PostgresIndex

        return PostgresIndex(url)
    from i2d_segments.index.sqlite import SqliteIndex

    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        # sqlite:///abs/path -> /abs/path ; sqlite://rel/path -> rel/path
        return SqliteIndex(Path(path))
    if url.endswith((".sqlite", ".sqlite3", ".db")):
        return SqliteIndex(Path(url))
    raise ValueError(f"unknown index URL (want postgresql://... or sqlite:///...): {url!r}")


def open_kafka_bus(settings: ConnectionSettings) -> Bus:
    from i2d_segments.bus.kafka import KafkaBus

    return KafkaBus(
        settings.kafka_bootstrap_servers,
        client_id=f"img2dataset-{settings.owner}",
        config=settings.kafka_config,
        max_message_bytes=settings.kafka_max_message_bytes,
    )


def store_from(settings: ConnectionSettings) -> SegmentStore:
    return open_store(
        settings.store_url, s3_endpoint_url=settings.s3_endpoint_url, s3_region=settings.s3_region
    )


def index_from(settings: ConnectionSettings) -> Index:
    index = open_index(settings.index_url)
    index.migrate()
    return index
