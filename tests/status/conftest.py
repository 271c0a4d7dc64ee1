"""A real dataset for the status tests, downloaded once (read only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from i2d_imageserver import ImageServer
from tests.reader.dataset import Dataset, build_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    with ImageServer() as images:
        yield build_dataset(images, tmp_path_factory.mktemp("status") / "out")
