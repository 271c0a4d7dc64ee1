"""`enqueue --wait`: return once every row this enqueue sent is recorded in the index.

Read from positions, not from the rows (a list of a billion ids would not fit in memory):
1. the fetchers answered every row sent: their group's committed offset on each `urls`
   partition passed the last record sent there (a fetcher commits a row only once its APPEND
   record is acknowledged);
2. every answer is recorded: the index's lease of each APPEND partition (the appender's
   `next_offset`, advanced by each segment commit) reached where that log ended at step 1.
The same on a folder's durable bus and on Kafka with PostgreSQL.
"""

from __future__ import annotations

import logging
import threading

from i2d_cli.enqueue import EnqueueSettings, Sent
from i2d_cli.progress import Progress
from i2d_segments.bus import Bus
from i2d_segments.folder import OutputFolder
from i2d_segments.index import Index

log = logging.getLogger(__name__)

# How often the positions are read while waiting (a lag query and an index query, both cheap):
# each wait may add itself to the end of every `--wait`, so they are read more often once
# few rows are left (fetchers answer thousands a second) and while the last are recorded.
POLL_SECONDS = 0.1
FINAL_POLL_SECONDS = 0.02
FINAL_ROWS = 1000


def wait_recorded(
    settings: EnqueueSettings,
    index: Index,
    bus: Bus,
    sent: Sent,
    folder: OutputFolder | None,
    stop: threading.Event,
) -> bool:
    """True once recorded; False if `stop` was set first."""
    if not sent.end:
        return True
    if folder is not None and not folder.served():
        log.warning(
            "no service runs on %s: the rows wait for `img2dataset service --output_folder %s`",
            folder.path,
            folder.path,
        )
    progress = Progress(sent.rows, settings.progress, unit="rows answered")
    try:
        while left := _unanswered(settings, bus, sent, progress):
            if stop.wait(POLL_SECONDS if left > FINAL_ROWS else FINAL_POLL_SECONDS):
                return False
        # Every APPEND record of these rows is below each log's current end.
        lags = bus.lag(settings.fetcher_group, settings.append_topic)  # any group: the ends
        ends = {p.partition: p.high_watermark for p in lags}
        while not _recorded(settings, index, ends):
            if stop.wait(FINAL_POLL_SECONDS):
                return False
    finally:
        progress.close()
    print(f"all {sent.rows} rows are recorded in the index", flush=True)
    return True


def _unanswered(settings: EnqueueSettings, bus: Bus, sent: Sent, progress: Progress) -> int:
    """Rows sent that the fetchers have not answered yet (0: all answered)."""
    done = 0
    left = 0
    for lag in bus.lag(settings.fetcher_group, settings.urls_topic):
        if lag.partition not in sent.end:
            continue
        committed = lag.committed or 0
        first, end = sent.first[lag.partition], sent.end[lag.partition]
        answered = min(max(committed - first, 0), end - first)
        done += answered
        left += end - first - answered
    progress.update(done)
    return left


def _recorded(settings: EnqueueSettings, index: Index, ends: dict[int, int]) -> bool:
    for partition, end in ends.items():
        lease = index.partition(settings.append_topic, partition)
        if (lease.next_offset if lease else 0) < end:
            return False
    return True
