"""An output folder: one machine's dataset (segments, index and durable bus) in one directory.

Every command that takes `--output_folder` resolves it here, and nowhere else, so they all agree
on where the parts are:

    out/
      img2dataset.json      what the folder holds: {"format": 1, "index": "index.sqlite"}
      index.sqlite          the index (its name is --index_name's, recorded above)
      bus.sqlite            the durable bus, once `img2dataset service` or `enqueue` used it
      segments/ manifests/  the segments and what the materializer derives from them
      .img2dataset.lock     held by the one process writing segments (`download` or `service`)

A download in one of img2dataset's other layouts (`--output_format files`...) keeps its dataset in
`out/_segments/`; `OutputFolder.find("out")` finds it there. A folder written before the
descriptor existed is recognised by its index file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from i2d_segments.bus import EmbeddedBus
    from i2d_segments.bus.sqlite import SqliteBus
    from i2d_segments.index import Index
    from i2d_segments.index.sqlite import SqliteIndex
    from i2d_segments.settings import ConnectionSettings
    from i2d_segments.store.local import LocalStore

DESCRIPTOR = "img2dataset.json"
DEFAULT_INDEX = "index.sqlite"
BUS_FILE = "bus.sqlite"
LOCK_FILE = ".img2dataset.lock"
# Where `download --output_format files|parquet|...` keeps the dataset beside img2dataset's layout.
INNER_FOLDER = "_segments"
FORMAT_VERSION = 1
# The local topics have one partition each: one process fetches (its worker processes share
# the rows), and one appender partition keeps one open segment, so a short list still lands in
# one segment instead of being spread thin.
LOCAL_PARTITIONS = 1


class FolderError(RuntimeError):
    """The folder is not what the command needs (no dataset, another index name, in use)."""


class FolderBusy(FolderError):
    """Another process writes this folder's segments."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.holder = holder
        super().__init__(f"{folder} is being written by {holder}")


@dataclass(frozen=True)
class OutputFolder:
    path: Path
    index_name: str = DEFAULT_INDEX

    @classmethod
    def at(cls, path: str | Path, index_name: str | None = None) -> OutputFolder:
        """The dataset at `path` exactly (it need not exist yet). Its index is the one its
        descriptor records; `index_name` names it for a new folder, and must agree with an
        existing one (two indexes over one folder's segments would each see the other's
        segments as garbage)."""
        folder = Path(path)
        recorded = _recorded_index(folder)
        if recorded is not None and index_name is not None and index_name != recorded:
            raise FolderError(
                f"{folder} holds a dataset indexed by {recorded}, not {index_name}: "
                f"drop --index_name or pass --index_name {recorded}"
            )
        return cls(folder, recorded or index_name or DEFAULT_INDEX)

    @classmethod
    def find(cls, path: str | Path) -> OutputFolder:
        """The dataset a user means by `path`: the folder itself, or its `_segments/` when a
        download wrote img2dataset's layout there. Raises FolderError if neither holds one."""
        folder = Path(path)
        for candidate in (folder, folder / INNER_FOLDER):
            found = cls.at(candidate)
            if found.index_path.is_file():
                return found
        raise FolderError(f"{folder} holds no img2dataset dataset (no {DEFAULT_INDEX})")

    # -- where things are ----------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.path / self.index_name

    @property
    def bus_path(self) -> Path:
        return self.path / BUS_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def has_bus(self) -> bool:
        return self.bus_path.is_file()

    # -- opening the parts ---------------------------------------------------------------------

    def record(self) -> None:
        """Write the descriptor (atomically): later commands find the index by it."""
        self.path.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": FORMAT_VERSION, "index": self.index_name}) + "\n"
        tmp = self.path / f".{DESCRIPTOR}.{os.getpid()}.tmp"
        tmp.write_text(body)
        tmp.replace(self.path / DESCRIPTOR)

    def open_store(self) -> LocalStore:
        from i2d_segments.store.local import LocalStore

        return LocalStore(self.path)

    def open_index(self) -> SqliteIndex:
        """The index, created and migrated if needed (writers: download, service, enqueue)."""
        from i2d_segments.index.sqlite import SqliteIndex

        self.record()
        index = SqliteIndex(self.index_path)
        try:
            index.migrate()
        except BaseException:
            index.close()
            raise
        return index

    def open_existing_index(self) -> SqliteIndex:
        """The index, which must exist (readers: status, materialize, verify...)."""
        if not self.index_path.is_file():
            raise FolderError(f"{self.path} has no {self.index_name}: not an output folder")
        return self.open_index()

    def open_bus(self) -> SqliteBus:
        """The folder's durable bus, created on first use."""
        from i2d_segments.bus.sqlite import SqliteBus

        self.path.mkdir(parents=True, exist_ok=True)
        return SqliteBus(self.bus_path)

    # -- who writes ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, role: str) -> Iterator[None]:
        """Hold the folder as its one writer of segments (`role`: "download", "service"...).
        Raises FolderBusy, naming the holder, when another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        # "a+": opening must not truncate what the holder wrote about itself.
        handle: IO[str] = self.lock_path.open("a+")
        # A few tries: `holder()` in another process takes the lock shared for an instant.
        for attempt in range(3):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 2:
                    handle.close()
                    holder = self.holder() or "another img2dataset process"
                    raise FolderBusy(self.path, holder) from None
                time.sleep(0.05)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"img2dataset {role} (pid {os.getpid()})\n")
            handle.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def holder(self) -> str | None:
        """Who holds the folder's lock, as it described itself; None when nobody does."""
        try:
            with self.lock_path.open("r") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return handle.read().strip() or "another img2dataset process"
                fcntl.flock(handle, fcntl.LOCK_UN)
                return None
        except FileNotFoundError:
            return None

    def served(self) -> bool:
        """An `img2dataset service` runs on this folder now."""
        holder = self.holder()
        return holder is not None and holder.startswith("img2dataset service")


def _recorded_index(folder: Path) -> str | None:
    """The index name the descriptor records; for a folder written before descriptors, the
    one index file it holds."""
    try:
        data = json.loads((folder / DESCRIPTOR).read_text())
    except FileNotFoundError:
        data = None
    except (OSError, ValueError) as e:
        raise FolderError(f"{folder / DESCRIPTOR} is unreadable: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("index"), str):
        return str(data["index"])
    if data is not None:
        raise FolderError(f"{folder / DESCRIPTOR} does not name an index")
    if (folder / DEFAULT_INDEX).is_file():
        return DEFAULT_INDEX
    others = sorted(
        p.name
        for p in folder.glob("*.sqlite*")
        if p.is_file() and p.name != BUS_FILE and not p.name.endswith(("-wal", "-shm", "-journal"))
    )
    return others[0] if len(others) == 1 else None


def create_urls_topic(bus: EmbeddedBus, topics: ConnectionSettings) -> None:
    """What `enqueue` needs of a folder's bus. Only the folder's writer creates the others:
    APPEND must start where the index's offsets end, which only the writer knows for sure."""
    bus.create_topic(topics.urls_topic, LOCAL_PARTITIONS)


def create_local_topics(bus: EmbeddedBus, index: Index, topics: ConnectionSettings) -> None:
    """urls, APPEND and SEGMENT_CLOSED with one partition each, by the folder's writer. A new
    APPEND log starts at the offset the index's lease of it reached, so the appender's fencing
    and resume work as on Kafka whichever bus carried the earlier segments' records; an
    existing one is left as it is."""
    from i2d_segments.bus import BusError

    create_urls_topic(bus, topics)
    try:
        bus.partition_count(topics.append_topic)
    except BusError:
        starts = []
        for p in range(LOCAL_PARTITIONS):
            lease = index.partition(topics.append_topic, p)
            starts.append(lease.next_offset if lease else 0)
        bus.create_topic(topics.append_topic, LOCAL_PARTITIONS, start_offsets=starts)
    bus.create_topic(topics.closed_topic, LOCAL_PARTITIONS)
