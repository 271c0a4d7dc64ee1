"""A SEGMENT_CLOSED consumer of your own: a training feed with a small enrichment.

For every committed segment it writes `feeds/<segment_id>.jsonl` into the dataset's store: one
line per stored image with its item_id, url, caption, stored size, and the image's mean colour
(the enrichment: read from the segment, one streaming pass). The framework
(`i2d_segments.consumer`) does the rest: it looks each announced segment up in the index,
commits offsets after `handle` returns, retries transient errors, and catches up on segments
committed while the consumer was not running.

    # over an embedded output folder: handle every segment not done yet, then exit
    python examples/segment_consumer.py --output_folder out

    # over Kafka + S3 + Postgres, the services' own settings (I2D_KAFKA_BOOTSTRAP_SERVERS,
    # I2D_STORE_URL, I2D_INDEX_URL, ...), until SIGTERM
    python examples/segment_consumer.py
"""

from __future__ import annotations

import argparse
import io
import json
import logging

from PIL import Image

from i2d_segments.consumer import ConsumerContext, ConsumerSettings, SegmentConsumer, run_consumer
from i2d_segments.index import SegmentRow


def feed_name(segment_id: str) -> str:
    return f"feeds/{segment_id}.jsonl"


def mean_colour(image: bytes) -> list[int]:
    with Image.open(io.BytesIO(image)) as img:
        small = img.convert("RGB").resize((1, 1), Image.Resampling.BOX)
        return list(small.getpixel((0, 0)))  # type: ignore[arg-type]


class TrainingFeed(SegmentConsumer):
    group_id = "training-feed"

    def handle(self, segment: SegmentRow, ctx: ConsumerContext) -> None:
        lines = []
        for item in ctx.items(segment.segment_id):  # one streaming read of the segment
            line = {
                "item_id": item.item_id,
                "url": item.url,
                "caption": item.caption,
                "width": item.meta.get("width"),
                "height": item.meta.get("height"),
                "mean_rgb": mean_colour(item.image),
            }
            lines.append(json.dumps(line, sort_keys=True) + "\n")
        # A name fixed by the segment, written whole with overwrite: handling a segment twice
        # (at-least-once delivery) gives the same file.
        ctx.store.put(feed_name(segment.segment_id), "".join(lines).encode())

    def is_done(self, segment: SegmentRow, ctx: ConsumerContext) -> bool:
        return ctx.store.exists(feed_name(segment.segment_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_folder", help="an embedded output folder (catch up, exit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = (
        ConsumerSettings()
        if args.output_folder is None
        else ConsumerSettings(output_folder=args.output_folder)
    )
    handled = run_consumer(TrainingFeed(), settings)
    if args.output_folder is not None:
        print(f"{handled} segments fed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
