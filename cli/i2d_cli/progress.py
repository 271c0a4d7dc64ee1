"""The download's progress bar: rows done of the total, rate and ETA, success ratio."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    def __init__(self, total: int | None, enabled: bool = True, unit: str = "rows") -> None:
        self._bar: tqdm[Any] | None = None
        if enabled:  # tqdm is imported only for a bar
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit=f" {unit}",
                dynamic_ncols=True,
                smoothing=0.1,
                file=sys.stderr,
                mininterval=0.5,
            )
        self._skipped = 0
        self._done = 0

    def set_total(self, total: int) -> None:
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def skipped(self, n: int) -> None:
        self._skipped += n
        self._advance()

    def update(self, rows_done: int, successes: int | None = None) -> None:
        self._done = rows_done
        if self._bar is not None and rows_done and successes is not None:
            self._bar.set_postfix_str(f"ok {successes / rows_done:.0%}", refresh=False)
        self._advance()

    def _advance(self) -> None:
        if self._bar is not None:
            delta = self._skipped + self._done - self._bar.n
            if delta > 0:
                self._bar.update(delta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
