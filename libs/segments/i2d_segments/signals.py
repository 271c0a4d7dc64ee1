"""SIGTERM and SIGINT for the long-running commands (`download`, `serve ...`): the first one
asks for a clean stop, the second one stops at once.

- First: a stop event is set. The command finishes the work in flight, commits it and exits
  (a download says how to resume; a service exits 0).
- Second: the process exits right away with 128 + the signal's number, without waiting for
  anything. That is safe because only committed work counts and every commit is atomic (the
  index transaction, the segment object, each sidecar file): to the next run, or to the
  partition's next owner, it is a crash, which they are built to resume from (uncommitted
  objects are garbage, uncommitted offsets are read again).

Kept light (no third-party import): the CLI installs the handlers first thing, so a signal
during start-up is not lost and never ends in a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

# The stop event of the command running now (inside `stop_signals()`), if any.
_active_stop: threading.Event | None = None
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _write_stderr(line: str) -> None:
    # os.write, not print or logging: a signal handler may run in the middle of a write to
    # the same buffered stream (the progress bar's), which would raise a reentrancy error.
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "replace"))


def _install(stop: threading.Event) -> dict[int, object]:
    """Install the two-step handler on SIGTERM and SIGINT; returns the previous handlers."""

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            # Second signal: stop now. Only committed work counts, and each commit is atomic
            # (the index transaction, the segment object, the sidecar files), so exiting here
            # is a crash the next run (or the partition's next owner) is built to resume from.
            _write_stderr(
                f"\nimg2dataset: {name} again: stopping now; work not committed yet is redone "
                "by the next run\n"
            )
            os._exit(128 + signum)
        _write_stderr(
            f"\nimg2dataset: {name}: finishing the work in flight and committing it "
            "(send it again to stop at once)\n"
        )
        stop.set()

    previous: dict[int, object] = {}
    for sig in STOP_SIGNALS:
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


@contextlib.contextmanager
def stop_signals(*, restore: bool = True) -> Iterator[threading.Event]:
    """SIGTERM and SIGINT while the block runs (main thread only): the first sets the event
    yielded (and returned by `stop_event_on_signals()` inside the block): the command finishes
    its work in flight, commits it and exits; the second exits the process at once, with
    128 + the signal's number. The CLI enters it first thing for `download` and `serve`, so
    a signal during start-up is not lost (the command starts with its stop already set) and
    never ends in a traceback.

    On leaving, the previous handlers come back (`restore`, for a caller that goes on), or
    (`restore=False`, for a process that ends with the command) a signal from then on exits
    at once: the interpreter's own shutdown (joining threads, atexit) is no place for a
    KeyboardInterrupt."""
    global _active_stop
    stop = threading.Event()
    previous = _install(stop)
    outer, _active_stop = _active_stop, stop
    try:
        yield stop
    finally:
        _active_stop = outer
        if restore:
            for sig, handler in previous.items():
                # None: a handler not installed from Python; the default is the closest.
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
        else:
            stop.set()


def stop_event_on_signals() -> threading.Event:
    """The stop event SIGTERM/SIGINT set (see `stop_signals`): the active one inside
    `stop_signals()`, else a new one with the handlers installed for the process's life."""
    if _active_stop is not None:
        return _active_stop
    stop = threading.Event()
    _install(stop)
    return stop


@contextlib.contextmanager
def children_ignore_stop_signals() -> Iterator[None]:
    """Processes started inside the block (main thread only) ignore SIGINT and SIGTERM, and so
    do the ones they fork (a fork server and its workers): a terminal's Ctrl-C reaches the
    whole foreground process group, and such a helper must be stopped by this process (which
    closes its connection), not die half-way through its start-up. Ignored dispositions
    survive exec, handlers do not, hence SIG_IGN while they start. The signals sent to this
    process meanwhile are held (blocked), not lost: delivered to its own handlers on leaving.
    Children inherit the blocked mask too, which changes nothing for signals they ignore."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
