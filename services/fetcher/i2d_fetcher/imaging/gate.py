"""A memory budget for decodes, shared by every process of the fetcher (`DecodeGate`).

Each worker process decodes one image at a time, but two workers decoding an image at the
pixel limit at once (about 360 MB each in Pillow's RGBA) would not fit the process tree's
memory target next to the bodies in flight. A heavy decode (its estimated memory at least
`GATE_FLOOR`) first reserves its estimate from a budget shared by all processes, waiting
while the others' reservations leave no room; light ones (nearly every web image) never
touch it.

The state is a small file mapped in every process (a slot per reservation: pid, bytes,
arrival order) under an exclusive `flock`:
- the gate pickles as its path and budget, so it can be handed to a worker process in any
  way (Process arguments, a pipe), and each process opens it on first use;
- a process killed while holding the lock releases it (the kernel drops a dead process's
  flock), and a reservation of a process that died is reclaimed by the next one to look;
- first come, first served: a reservation waits behind earlier waiters too, so a decode at
  the limit is not starved by a stream of smaller ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from i2d_fetcher.imaging import guard

MiB = 1 << 20
GATE_FLOOR = 16 * MiB  # decodes estimated below this do not reserve
SLOTS = 64
_HEADER = struct.Struct("<q")  # next arrival number
_SLOT = struct.Struct("<qqqq")  # pid, bytes, arrival, state
_FREE, _WAITING, _HOLDING = 0, 1, 2
_SIZE = _HEADER.size + SLOTS * _SLOT.size
_POLL = (0.002, 0.05)  # seconds between two looks at the budget: first, at most


class DecodeGate:
    """`budget` bytes of decodes at once across every process that holds this gate."""

    def __init__(self, budget: int, path: str | None = None) -> None:
        if budget <= 0:
            raise ValueError("the decode budget must be positive")
        self.budget = budget
        self._owner = path is None
        if path is None:
            directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, path = tempfile.mkstemp(prefix="i2d-decode-gate-", dir=directory)
            os.ftruncate(fd, _SIZE)
            os.close(fd)
            self._finalizer: Any = weakref.finalize(self, _unlink, path, os.getpid())
        self.path = path
        self._local = threading.Lock()  # threads of one process share its flock
        self._opened: tuple[int, int, mmap.mmap] | None = None  # (pid, fd, map)

    @classmethod
    def for_limit(cls, max_decoded_pixels: int) -> DecodeGate:
        """A gate whose budget is one decode at the pixel limit (guard.memory_cap): a decode
        that big runs alone, smaller heavy ones share it."""
        return cls(guard.memory_cap(max_decoded_pixels))

    def __reduce__(self) -> tuple[Any, ...]:
        return (DecodeGate, (self.budget, self.path))

    def close(self) -> None:
        """Remove the file (the creator only; processes holding it must be done)."""
        if self._opened is not None:
            pid, fd, mem = self._opened
            if pid == os.getpid():
                mem.close()
                os.close(fd)
            self._opened = None
        if self._owner:
            self._finalizer()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Reserve `nbytes` (at most the whole budget) for the duration of the block,
        waiting for room; below GATE_FLOOR, nothing is reserved."""
        if nbytes < GATE_FLOOR:
            yield
            return
        slot = self._acquire(min(nbytes, self.budget))
        try:
            yield
        finally:
            with self._locked() as mem:
                _SLOT.pack_into(mem, _offset(slot), 0, 0, 0, _FREE)

    def in_use(self) -> int:
        """Bytes reserved now (reservations of dead processes not counted)."""
        return self.state()[0]

    def state(self) -> tuple[int, int]:
        """(bytes reserved, decodes waiting) now, over every process."""
        held = waiting = 0
        with self._locked() as mem:
            for _, _, nbytes, _, state in _slots(mem):
                if state == _HOLDING:
                    held += nbytes
                else:
                    waiting += 1
        return held, waiting

    # ----------------------------------------------------------------- internals

    def _acquire(self, nbytes: int) -> int:
        pid = os.getpid()
        slot = -1
        delay = _POLL[0]
        while True:
            with self._locked() as mem:
                if slot < 0:
                    slot = _claim(mem, pid, nbytes)
                if slot >= 0 and _admit(mem, slot, nbytes, self.budget):
                    return slot
            time.sleep(delay)
            delay = min(_POLL[1], delay * 2)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[mmap.mmap]:
        with self._local:
            fd, mem = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield mem
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> tuple[int, mmap.mmap]:
        # A forked child must not share its parent's open file: flock belongs to it.
        if self._opened is None or self._opened[0] != os.getpid():
            fd = os.open(self.path, os.O_RDWR)
            self._opened = (os.getpid(), fd, mmap.mmap(fd, _SIZE))
        return self._opened[1], self._opened[2]


def _unlink(path: str, creator: int) -> None:
    if os.getpid() != creator:  # a forked copy of the creator exiting: not its file
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _offset(slot: int) -> int:
    return _HEADER.size + slot * _SLOT.size


def _slots(mem: mmap.mmap) -> Iterator[tuple[int, int, int, int, int]]:
    """(slot, pid, bytes, arrival, state) of the used slots; a dead process's are freed."""
    for i in range(SLOTS):
        pid, nbytes, arrival, state = _SLOT.unpack_from(mem, _offset(i))
        if state == _FREE:
            continue
        if not _alive(pid):
            _SLOT.pack_into(mem, _offset(i), 0, 0, 0, _FREE)
            continue
        yield i, pid, nbytes, arrival, state


def _claim(mem: mmap.mmap, pid: int, nbytes: int) -> int:
    """A free slot, marked waiting with the next arrival number; -1 if all are taken."""
    used = {i for i, *_ in _slots(mem)}
    for i in range(SLOTS):
        if i not in used:
            (arrival,) = _HEADER.unpack_from(mem, 0)
            _HEADER.pack_into(mem, 0, arrival + 1)
            _SLOT.pack_into(mem, _offset(i), pid, nbytes, arrival, _WAITING)
            return i
    return -1


def _admit(mem: mmap.mmap, slot: int, nbytes: int, budget: int) -> bool:
    """Turn a waiting slot into a holding one if the holders and the earlier waiters leave
    room for it (a lone request always fits: it is at most the budget)."""
    pid, _, arrival, _ = _SLOT.unpack_from(mem, _offset(slot))
    ahead = sum(
        b
        for i, _, b, a, state in _slots(mem)
        if i != slot and (state == _HOLDING or (state == _WAITING and a < arrival))
    )
    if ahead and ahead + nbytes > budget:
        return False
    _SLOT.pack_into(mem, _offset(slot), pid, nbytes, arrival, _HOLDING)
    return True


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")
