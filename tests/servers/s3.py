"""S3 test server: moto in server mode on a free loopback port, one fresh bucket per test.

The fixture sets no environment variable: a test or child process that needs credentials takes
them from `s3_env(server)` (monkeypatch, or a child's `env=`), so nothing leaks between tests.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.servers.proc import ServerProcess, free_port, running

# moto accepts any credentials; fixed ones keep child-process environments reproducible.
_ACCESS_KEY = "testing-access-key"
_SECRET_KEY = "testing-secret-key"
_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str


def s3_env(server: S3Server) -> dict[str, str]:
    """The AWS_* variables a child process (boto3, or the Tansu broker) needs to reach `server`."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
        "AWS_REGION": server.region,
        "AWS_ENDPOINT_URL": server.endpoint_url,
        # Tansu (object_store crate) reads these two rather than AWS_ENDPOINT_URL.
        "AWS_ENDPOINT": server.endpoint_url,
        "AWS_ALLOW_HTTP": "true",
    }


def s3_client(server: S3Server) -> Any:
    """A plain boto3 client for `server`, for test setup and inspection."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    server = ServerProcess([str(moto), "-H", "127.0.0.1", "-p", str(port)], log)
    with running(server, port, timeout=60.0):
        yield S3Server(
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key=_ACCESS_KEY,
            secret_key=_SECRET_KEY,
            region=_REGION,
        )


@pytest.fixture(scope="session")
def _s3_admin(s3_server: S3Server) -> Iterator[Any]:
    """One client for bucket setup: building a boto3 client costs a good fraction of a second."""
    client = s3_client(s3_server)
    yield client
    client.close()


@pytest.fixture
def s3_bucket(_s3_admin: Any) -> str:
    """A new, empty bucket for this test only."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    _s3_admin.create_bucket(Bucket=name)
    return name
