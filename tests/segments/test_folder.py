"""OutputFolder: the one place an output folder resolves to its index, store, bus and lock.

The descriptor records the index's name and later commands find it by it; a conflicting
--index_name is refused naming both; `find` finds the dataset a download in img2dataset's
layouts keeps in `_segments/`, and a folder written before descriptors by its one index file;
the writer lock names its holder to whoever else wants it, and is free again once the holder
dies (even by SIGKILL: the kernel drops a dead process's flock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from i2d_segments.folder import (
    BUS_FILE,
    DEFAULT_INDEX,
    DESCRIPTOR,
    INNER_FOLDER,
    FolderBusy,
    FolderError,
    OutputFolder,
)
from i2d_segments.index.sqlite import SqliteIndex


def test_descriptor_is_recorded_and_read_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    new = OutputFolder.at(out, "other.sqlite")
    assert not out.exists()  # nothing is written until asked
    assert new.index_path == out / "other.sqlite" and new.bus_path == out / BUS_FILE
    index = new.open_index()  # records the descriptor and creates the index
    index.close()
    assert json.loads((out / DESCRIPTOR).read_text()) == {"format": 1, "index": "other.sqlite"}
    assert not list(out.glob(f".{DESCRIPTOR}*.tmp"))  # written whole, then renamed
    # Later commands, given no --index_name (or the same one), find the recorded index.
    for again in (OutputFolder.at(out), OutputFolder.at(str(out), "other.sqlite")):
        assert again.index_name == "other.sqlite" and again.index_path == out / "other.sqlite"
    assert OutputFolder.find(out) == OutputFolder(out, "other.sqlite")
    # A new folder without --index_name gets the default.
    assert OutputFolder.at(tmp_path / "fresh").index_name == DEFAULT_INDEX == "index.sqlite"


def test_a_conflicting_index_name_is_an_error_naming_both(tmp_path: Path) -> None:
    OutputFolder.at(tmp_path, "other.sqlite").record()
    with pytest.raises(FolderError) as e:
        OutputFolder.at(tmp_path, "index.sqlite")
    assert "other.sqlite" in str(e.value) and "index.sqlite" in str(e.value)


def test_an_unreadable_descriptor_is_an_error(tmp_path: Path) -> None:
    (tmp_path / DESCRIPTOR).write_text("{not json")
    with pytest.raises(FolderError, match=DESCRIPTOR):
        OutputFolder.at(tmp_path)
    (tmp_path / DESCRIPTOR).write_text('{"format": 1}')
    with pytest.raises(FolderError, match="does not name an index"):
        OutputFolder.find(tmp_path)


def test_find_locates_the_dataset_kept_in_segments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inner = out / INNER_FOLDER
    OutputFolder.at(inner).open_index().close()
    (out / "00000.parquet").write_bytes(b"img2dataset's layout beside it")
    found = OutputFolder.find(out)
    assert found.path == inner and found.index_path == inner / "index.sqlite"
    assert found.open_store().root == inner.absolute()
    # The folder's own dataset comes first.
    OutputFolder.at(out).open_index().close()
    assert OutputFolder.find(out).path == out


def test_find_without_a_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(FolderError, match="holds no img2dataset dataset"):
            OutputFolder.find(path)
    # A descriptor naming an index that is not there is no dataset either.
    OutputFolder.at(tmp_path / "lost", "other.sqlite").record()
    with pytest.raises(FolderError):
        OutputFolder.find(tmp_path / "lost")


def test_an_old_folder_is_found_by_its_one_index_file(tmp_path: Path) -> None:
    # Written before descriptors, with --index_name other.sqlite: no img2dataset.json.
    index = SqliteIndex.open(tmp_path / "other.sqlite")
    index.close()
    assert not (tmp_path / DESCRIPTOR).exists()
    # Neither the bus nor the index's SQLite side files are a second index.
    for name in (BUS_FILE, "other.sqlite-wal", "other.sqlite-shm"):
        (tmp_path / name).write_bytes(b"")
    found = OutputFolder.find(tmp_path)
    assert found.index_name == "other.sqlite" and found.index_path == tmp_path / "other.sqlite"
    # Two candidate indexes: nothing says which, so neither is taken.
    SqliteIndex.open(tmp_path / "third.sqlite").close()
    with pytest.raises(FolderError):
        OutputFolder.find(tmp_path)
    assert OutputFolder.at(tmp_path).index_name == DEFAULT_INDEX
    assert OutputFolder.at(tmp_path, "third.sqlite").index_name == "third.sqlite"


def test_has_bus(tmp_path: Path) -> None:
    folder = OutputFolder.at(tmp_path)
    assert not folder.has_bus()
    (tmp_path / BUS_FILE).write_bytes(b"")
    assert folder.has_bus()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from i2d_segments.folder import OutputFolder

    with OutputFolder.at(sys.argv[1]).lock("service"):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def test_lock_names_its_holder_and_is_free_once_it_is_killed(tmp_path: Path) -> None:
    folder = OutputFolder.at(tmp_path / "out")
    assert folder.holder() is None and not folder.served()
    with folder.lock("download"):  # free: taken, and released on leaving
        assert folder.holder() == f"img2dataset download (pid {os.getpid()})"
    assert folder.holder() is None

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder.path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        expected = f"img2dataset service (pid {holder.pid})"
        assert folder.holder() == expected and folder.served()
        with pytest.raises(FolderBusy) as e, folder.lock("download"):
            pytest.fail("a second writer got the lock")
        assert e.value.holder == expected
        assert expected in str(e.value) and str(folder.path) in str(e.value)
        assert isinstance(e.value, FolderError)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    # Killed without a word: the kernel released its lock; what it wrote of itself remains in
    # the file, but nobody holds the lock, so nobody is named.
    assert folder.holder() is None and not folder.served()
    with folder.lock("download"):
        assert folder.holder() == f"img2dataset download (pid {os.getpid()})"
