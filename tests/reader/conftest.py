"""One real dataset, downloaded once for the reader tests (read only: tests copy it to modify)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from i2d_imageserver import ImageServer
from tests.reader.dataset import Dataset, build_dataset


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="session")
def dataset(image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return build_dataset(image_server, tmp_path_factory.mktemp("reader") / "out")
