"""LocalStore: the SegmentStore port over a folder (the embedded mode's store).

An object is the file `root/<name>`. An upload streams into a hidden temp file beside its
final name (`.<basename>.<16 hex>.part`, so the publish never crosses a filesystem), and
`complete()` publishes it with `os.link`, which fails if the name exists: unlike `rename`, two
writers racing for one name cannot overwrite each other. File data is fsynced before the link
and the directory after it, so a published object survives a power cut. Temp files are never
listed as objects; `list_incomplete_uploads` reports them for garbage collection.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from i2d_segments.store.base import (
    IncompleteUpload,
    ObjectExistsError,
    ObjectInfo,
    SegmentStore,
    SegmentUpload,
    StoreError,
)
from i2d_segments.store.name_check import check_name

_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.[0-9a-f]{16}\.part$")


def _is_temp(basename: str) -> bool:
    return _TEMP_RE.match(basename) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(SegmentStore):
    def __init__(self, root: Path) -> None:
        # Absolute but not resolved: a symlinked output folder keeps the path the user gave.
        self.root = Path(root).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store folder {self.root}: {e}") from e

    # -- names and paths -------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        check_name(name)
        if _is_temp(name.rpartition("/")[2]):
            raise ValueError(f"object name looks like an upload temp file: {name!r}")
        return self.root / name

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` under root, fsyncing each parent that gains an entry."""
        missing: list[Path] = []
        current = directory
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise StoreError(f"{path} exists and is not a folder") from None
                continue
            except OSError as e:
                raise StoreError(f"cannot create folder {path}: {e}") from e
            _fsync_dir(path.parent)

    def _new_temp(self, final: Path) -> tuple[Path, BinaryIO]:
        self._make_dirs(final.parent)
        temp = final.parent / f".{final.name}.{secrets.token_hex(8)}.part"
        try:
            return temp, temp.open("xb")
        except OSError as e:
            raise StoreError(f"cannot create {temp}: {e}") from e

    def _publish_new(self, temp: Path, final: Path, name: str) -> None:
        """Give the synced temp file its final name unless that name exists; remove the temp."""
        try:
            os.link(temp, final)
        except FileExistsError:
            temp.unlink(missing_ok=True)
            raise ObjectExistsError(f"object exists: {name}") from None
        except OSError as e:
            raise StoreError(f"cannot publish {name}: {e}") from e
        try:
            temp.unlink()
            _fsync_dir(final.parent)
        except OSError as e:
            raise StoreError(f"published {name} but could not tidy up: {e}") from e

    # -- the port --------------------------------------------------------------------------

    def uri(self, name: str) -> str:
        return self._path(name).as_uri()

    def begin_upload(self, name: str) -> SegmentUpload:
        final = self._path(name)
        temp, file = self._new_temp(final)
        return _LocalUpload(self, name, final, temp, file)

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        final = self._path(name)
        temp, file = self._new_temp(final)
        try:
            with file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if overwrite:
                os.replace(temp, final)
                _fsync_dir(final.parent)
            else:
                self._publish_new(temp, final, name)
        except OSError as e:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {name}: {e}") from e
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except IsADirectoryError:
            raise FileNotFoundError(f"no object {name!r} (a folder has that name)") from None

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset={offset} length={length}")
        path = self._path(name)
        if length == 0:
            return b""
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks: list[bytes] = []
            got = 0
            while got < length:
                chunk = os.pread(fd, length - got, offset + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            os.close(fd)
        if got != length:
            raise StoreError(
                f"{name}: wanted {length} bytes at offset {offset}, the object has only {got} there"
            )
        return b"".join(chunks)

    def open_stream(self, name: str) -> BinaryIO:
        return self._path(name).open("rb")

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot delete {name}: {e}") from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder, slash, start = prefix.rpartition("/")
        if not slash:
            yield from self._walk(self.root, "", start)
            return
        try:
            check_name(folder)
        except ValueError:
            return  # no valid name starts with this prefix (as S3 would answer: nothing)
        yield from self._walk(self.root / folder, folder + "/", start)

    def _walk(self, directory: Path, rel: str, start: str) -> Iterator[ObjectInfo]:
        """Objects under `directory` whose basename starts with `start`, in full-name order.

        A folder sorts as `name/`, so `a.b` < `a/...` < `ab` exactly as the names compare, and
        the walk yields global name order while holding only one folder's listing at a time.
        """
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(start)]
        except (FileNotFoundError, NotADirectoryError):
            return
        keyed: list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                keyed.append((entry.name + "/", entry, True))
            elif entry.is_file() and not _is_temp(entry.name):
                keyed.append((entry.name, entry, False))
        keyed.sort(key=lambda k: k[0])
        for key, entry, is_dir in keyed:
            if is_dir:
                yield from self._walk(Path(entry.path), rel + key, "")
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # deleted since the scan
                continue
            yield ObjectInfo(rel + entry.name, st.st_size, st.st_mtime)

    def list_incomplete_uploads(self) -> Iterator[IncompleteUpload]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for filename in sorted(filenames):
                m = _TEMP_RE.match(filename)
                if m is None:
                    continue
                try:
                    started = os.stat(os.path.join(dirpath, filename)).st_mtime
                except FileNotFoundError:  # completed or aborted since the scan
                    continue
                yield IncompleteUpload(rel_dir + m.group("base"), rel_dir + filename, started)

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        check_name(upload.upload_id)
        if not _is_temp(upload.upload_id.rpartition("/")[2]):
            raise ValueError(f"not an upload of this store: {upload.upload_id!r}")
        try:
            (self.root / upload.upload_id).unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot remove {upload.upload_id}: {e}") from e


class _LocalUpload(SegmentUpload):
    def __init__(
        self, store: LocalStore, name: str, final: Path, temp: Path, file: BinaryIO
    ) -> None:
        self._store = store
        self._name = name
        self._final = final
        self._temp = temp
        self._file = file
        self._written = 0
        self._state = "open"  # -> "completed" | "aborted"

    def write(self, data: bytes | memoryview) -> None:
        if self._state != "open" or self._file.closed:
            raise StoreError(f"upload of {self._name} is {self._state} (or being completed)")
        try:
            self._file.write(data)
        except OSError as e:
            raise StoreError(f"cannot write {self._name}: {e}") from e
        self._written += len(data) if isinstance(data, bytes) else data.nbytes

    @property
    def bytes_written(self) -> int:
        return self._written

    def complete(self) -> str:
        if self._state != "open":
            raise StoreError(f"upload of {self._name} is {self._state}")
        try:
            if not self._file.closed:  # closed already if an earlier complete() failed later on
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
        except OSError as e:
            raise StoreError(f"cannot write {self._name}: {e}") from e
        try:
            self._store._publish_new(self._temp, self._final, self._name)
        except ObjectExistsError:
            self._state = "aborted"  # _publish_new removed the temp file
            raise
        self._state = "completed"
        return self._final.as_uri()

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        with contextlib.suppress(OSError):
            self._file.close()
        try:
            self._temp.unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot remove {self._temp}: {e}") from e
