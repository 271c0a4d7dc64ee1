"""The fetcher's tests run against the project's local image server, in this process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from i2d_imageserver import ImageServer


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server
