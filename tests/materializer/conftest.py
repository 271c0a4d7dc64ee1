"""A real dataset, downloaded once; each test gets its own copy to write into."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from i2d_cli.main import main
from i2d_imageserver import ImageServer
from tests.reader.dataset import Dataset, build_dataset


@pytest.fixture(scope="session")
def _pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    with ImageServer() as images:
        yield build_dataset(images, tmp_path_factory.mktemp("materializer") / "out")


@pytest.fixture
def dataset(_pristine: Dataset, tmp_path: Path) -> Dataset:
    folder = tmp_path / "out"
    shutil.copytree(_pristine.folder, folder, ignore=shutil.ignore_patterns(".img2dataset.lock"))
    # The shard lists hold absolute URIs: a moved folder gets them rewritten by `materialize`.
    assert main(["materialize", "--output_folder", str(folder)]) == 0
    return replace(_pristine, folder=folder)
