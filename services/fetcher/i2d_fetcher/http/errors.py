"""The one exception a download (or a robots.txt fetch) ends with when it gets no usable body."""

from __future__ import annotations

from i2d_fetcher.reasons import one_line


class FetchFailed(Exception):
    """The download failed with `message`; `transient` failures may succeed if tried again;
    `host_failure`s (no answer: refused, reset, timed out) count towards the host's breaker;
    `timed_out` ones are those where the host did not answer in time."""

    def __init__(
        self,
        message: str,
        transient: bool,
        retry_after: float | None = None,
        *,
        host_failure: bool = False,
        status: int | None = None,
        timed_out: bool = False,
    ) -> None:
        message = one_line(message)
        super().__init__(message, transient, retry_after)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.host_failure = host_failure
        self.status = status
        self.timed_out = timed_out

    def __str__(self) -> str:
        return self.message
