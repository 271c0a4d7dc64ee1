"""`img2dataset verify`: every committed segment's sha256, and ranged reads of sampled items.

    img2dataset verify --output_folder out                    # 1000 items read back
    img2dataset verify --output_folder out --sample all       # or --sample 0.1 (a fraction)
    img2dataset verify --store_url s3://bucket/ds/ --index_url postgresql://...

Exits 1 on any mismatch. What is compared with what: `i2d_segments.ops.verify`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from pydantic import Field

from i2d_cli.dataset import DatasetOptions, existing_index_of, store_of
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.progress import Progress
from i2d_segments.index import IndexAccessError, SegmentRow
from i2d_segments.ops.verify import DEFAULT_SAMPLE, Mismatch, verify_dataset
from i2d_segments.store import StoreError

NAME = "verify"
HELP = "Check every segment's sha256 and item rows, and read back a sample of items."


class VerifyOptions(DatasetOptions):
    sample: int | float | Literal["all"] = Field(
        DEFAULT_SAMPLE,
        description="Items read back with a ranged read: a count, a fraction (0.1), or all.",
    )
    seed: int | None = Field(None, description="Seed of the item sample (reproducible runs).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, VerifyOptions)


def run(ns: argparse.Namespace) -> int:
    opts = VerifyOptions(**model_kwargs(ns, VerifyOptions))
    store = store_of(opts)
    index = existing_index_of(opts)
    sample = None if opts.sample == "all" else opts.sample
    bar: Progress | None = None
    done = 0

    def progress(seg: SegmentRow, found: list[Mismatch]) -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update(done)
        for m in found:
            print(f"MISMATCH {m}")

    try:
        bar = Progress(index.totals().segments, unit="segments")  # one aggregate query
        report = verify_dataset(store, index, sample=sample, seed=opts.seed, on_segment=progress)
    except ValueError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    except (IndexAccessError, StoreError) as e:
        print(f"img2dataset: verify failed: {e}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
        index.close()
        store.close()
    print(
        f"verified {report.segments} segments ({report.bytes} bytes, "
        f"{report.items_located} item rows located), {report.items_read} items read back"
        + (f", {report.items_unverifiable} unverifiable" if report.items_unverifiable else "")
        + f": {len(report.mismatches)} mismatches"
    )
    return 0 if report.ok else 1
