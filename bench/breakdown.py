"""Where each image's CPU goes in our download, beside the decode-resize-encode floor.

Each `download` prints its CPU seconds by stage at the end of its summary (`cpu seconds by
stage: download=... other=...`, see README "Where the CPU goes"): the worker processes'
stages (download: their event loop, HTTP and all; hash; decode; resize; encode; record;
handoff), the main process's (handoff; append; index; materialize) and `other`, the main
process's CPU no stage accounts for. This reads those lines from the bench's run logs and
prints ms per image by stage (per row for a corpus without images), the bench's own measure of
the process trees' CPU, and what no stage accounts for (start-up of the processes and the
fork server, the command before its run starts).

The floor: the same decode, resize and encode (`process_image`, the bench's settings) of the
corpus's images, one after the other in this process, on one core: what an image costs with
no download, hand-off, hashing or bookkeeping at all.

    python -m bench.breakdown [--work .cache/bench] [--corpus-dir .cache/bench-corpus]

reads the last `make bench`'s results.json and logs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.harness import ENCODE_FORMAT, ENCODE_QUALITY, IMAGE_SIZE, RESIZE_MODE

ROOT = Path(__file__).resolve().parent.parent
_LINE = re.compile(r"^cpu seconds by stage: (.*)$", re.M)
# Images the floor is measured on (the first of the list), and passes over them (the fastest
# pass counts: the least disturbed by whatever else the machine runs).
FLOOR_IMAGES = 300
FLOOR_PASSES = 3


def stage_seconds(log: str) -> dict[str, float] | None:
    """The `stage=seconds` pairs of a download's summary, in its order; None without one."""
    m = _LINE.search(log)
    if m is None:
        return None
    pairs = (part.split("=", 1) for part in m.group(1).split())
    return {k: float(v) for k, v in pairs}


def corpus_files(url_list: Path, corpus_dir: Path, limit: int = FLOOR_IMAGES) -> list[Path]:
    """The corpus's files behind the list's `/img/<name>` urls (the image server serves
    `<corpus_dir>/photo-<name>` as it is)."""
    out = []
    for url in url_list.read_text().split():
        _, sep, name = url.partition("/img/")
        path = corpus_dir / f"photo-{name.split('?')[0]}"
        if sep and path.is_file():
            out.append(path)
        if len(out) >= limit:
            break
    return out


def floor_ms(files: Sequence[Path]) -> dict[str, float]:
    """ms of CPU per image of decode, resize and encode on this thread, the bench's settings;
    the fastest of FLOOR_PASSES passes (its steps split as the fetcher splits them)."""
    from i2d_fetcher.imaging.pipeline import process_image
    from i2d_fetcher.options import FetchOptions

    opts = FetchOptions(
        image_size=IMAGE_SIZE,
        resize_mode=RESIZE_MODE,
        encode_quality=ENCODE_QUALITY,
        encode_format=ENCODE_FORMAT,
    )
    bodies = [p.read_bytes() for p in files]
    best: dict[str, float] = {}
    for _ in range(FLOOR_PASSES):
        steps = {"resize": 0.0, "encode": 0.0}
        started = time.thread_time()
        for data in bodies:
            cpu: dict[str, float] = {}
            process_image(data, opts, cpu=cpu)
            for k, v in cpu.items():
                steps[k] += v
        total = time.thread_time() - started
        if not best or total * 1000 / len(bodies) < best["total"]:
            n = len(bodies)
            best = {
                "total": total * 1000 / n,
                "decode": (total - steps["resize"] - steps["encode"]) * 1000 / n,
                "resize": steps["resize"] * 1000 / n,
                "encode": steps["encode"] * 1000 / n,
            }
    return best


def breakdown(runs: Sequence[dict[str, object]], runs_dir: Path) -> dict[str, dict[str, object]]:
    """Per corpus, the median over our download runs of ms per image (per row without images)
    by stage, with the sum, the trees' CPU (the bench's sampler) and what no stage holds."""
    out: dict[str, dict[str, object]] = {}
    for corpus in dict.fromkeys(str(r["corpus"]) for r in runs if r["tool"] == "download"):
        per_run: list[dict[str, float]] = []
        unit = "image"
        for r in runs:
            if r["tool"] != "download" or r["corpus"] != corpus:
                continue
            log = runs_dir / f"{corpus}-download-{r['round']}.log"
            seconds = stage_seconds(log.read_text()) if log.is_file() else None
            if seconds is None:
                continue
            successes, rows = float(str(r["successes"])), float(str(r["rows"]))
            count, unit = (successes, "image") if successes else (rows, "row")
            if not count:
                continue
            ms = {k: v * 1000 / count for k, v in seconds.items()}
            ms["stages"] = sum(seconds.values()) * 1000 / count
            tree = r.get("cpu_seconds")
            if isinstance(tree, int | float):
                ms["tree"] = tree * 1000 / count
                ms["unaccounted"] = ms["tree"] - ms["stages"]
            per_run.append(ms)
        if per_run:
            keys = list(dict.fromkeys(k for ms in per_run for k in ms))
            out[corpus] = {
                "per": unit,
                "runs": len(per_run),
                "ms": {
                    k: round(statistics.median(ms.get(k, 0.0) for ms in per_run), 3) for k in keys
                },
            }
    return out


def render(table: dict[str, dict[str, object]], floor: dict[str, float] | None) -> str:
    lines = ["CPU per image by stage, our download (ms; median of its runs; all processes):"]
    for corpus, row in table.items():
        ms = row["ms"]
        assert isinstance(ms, dict)
        stages = [k for k in ms if k not in ("stages", "tree", "unaccounted")]
        lines.append(
            f"  {corpus} (per {row['per']}, {row['runs']} runs): "
            + ", ".join(f"{k} {ms[k]:.2f}" for k in stages)
        )
        tail = f"    = {ms['stages']:.2f} ms in stages"
        if "tree" in ms:
            tail += (
                f"; the process trees' CPU {ms['tree']:.2f} (unaccounted: start-up of the"
                f" processes, the fork server: {ms['unaccounted']:.2f})"
            )
        lines.append(tail)
    if floor:
        lines.append(
            f"  floor: decode+resize+encode in one process on one core {floor['total']:.2f} ms"
            f" per image (decode {floor['decode']:.2f}, resize {floor['resize']:.2f}, encode"
            f" {floor['encode']:.2f}; no download, hashing or hand-off)"
        )
        for corpus, row in table.items():
            ms = row["ms"]
            assert isinstance(ms, dict)
            if row["per"] == "image":
                over = ms["stages"] - floor["total"]
                lines.append(f"  {corpus}: {over:.2f} ms per image above the floor")
    return "\n".join(lines)


def report(
    runs: Sequence[dict[str, object]], runs_dir: Path, url_list: Path | None, corpus_dir: Path
) -> tuple[dict[str, object], str]:
    """(figures for results.json, the text to print) for the bench's runs."""
    table = breakdown(runs, runs_dir)
    files = corpus_files(url_list, corpus_dir) if url_list and url_list.is_file() else []
    floor = floor_ms(files) if files else None
    figures: dict[str, object] = {"by_corpus": table, "floor_ms": floor, "floor_images": len(files)}
    return figures, render(table, floor)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--corpus-dir", type=Path, default=ROOT / ".cache" / "bench-corpus")
    ns = p.parse_args(argv)
    results = json.loads((ns.work / "results.json").read_text())
    _, text = report(results["runs"], ns.work / "runs", ns.work / "clean.txt", ns.corpus_dir)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
