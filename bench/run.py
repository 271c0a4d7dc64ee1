"""`make bench`: our embedded download against img2dataset on the same url lists.

    python -m bench.run --img2dataset .venv-bench/bin/img2dataset [--count 3000 --rounds 3]

Starts the local image server over a warm, cached corpus; for each corpus (clean, faulty) runs
the two tools alternately (ours, img2dataset, ours, ...) into fresh output folders with the
same settings; then our download alone at two list sizes for peak RSS. Prints a table and
writes the figures to <work>/results.json. Timings are wall-clock on a shared machine: run it
on an idle one, and read the median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.harness import (
    ImageServer,
    RunResult,
    Settings,
    cycled_list,
    faulty_list,
    ours_extra_flags,
    run_img2dataset,
    run_ours,
    write_list,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAULTS = "missing=0.04,notimage=0.02,truncated=0.02,noai=0.02,slow=0.01"


def parse_faults(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, value = part.partition("=")
        out[kind.strip()] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--img2dataset", required=True, help="img2dataset 1.47 executable")
    p.add_argument("--ours", default=str(Path(sys.executable).parent / "img2dataset"))
    p.add_argument("--count", type=int, default=3000, help="urls per timed run")
    p.add_argument("--rounds", type=int, default=3, help="runs of each tool per corpus")
    p.add_argument("--corpus-size", type=int, default=5000, help="distinct photos served")
    p.add_argument("--faults", default=DEFAULT_FAULTS, help="the faulty corpus: kind=fraction")
    p.add_argument("--corpora", default="clean,faulty", help="which corpora to time")
    p.add_argument("--processes", type=int, default=2, help="CPU worker processes, both tools")
    p.add_argument("--img2dataset-threads", type=int, default=32, help="per process")
    p.add_argument(
        "--ours-threads",
        type=int,
        default=0,
        help="rows in flight (default: processes x img2dataset-threads, the same total)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="number_sample_per_shard for both (default: count / (2 x processes), so every "
        "img2dataset process gets two shards)",
    )
    p.add_argument(
        "--rss-counts", default="5000,50000", help="list sizes for peak RSS ('' to skip)"
    )
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--corpus-dir", type=Path, default=ROOT / ".cache" / "bench-corpus")
    return p


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    settings = Settings(
        processes=ns.processes,
        img2dataset_threads=ns.img2dataset_threads,
        ours_threads=ns.ours_threads or ns.processes * ns.img2dataset_threads,
        shard_size=ns.shard_size or max(100, ns.count // (2 * ns.processes)),
    )
    rss_counts = [int(c) for c in ns.rss_counts.split(",") if c.strip()]
    work: Path = ns.work
    work.mkdir(parents=True, exist_ok=True)
    runs_dir = work / "runs"
    runs_dir.mkdir(exist_ok=True)
    extra = ours_extra_flags(ns.ours)
    corpus_size = max(ns.corpus_size, ns.count)

    print(f"warming {corpus_size} photos in {ns.corpus_dir} (generated once)...", flush=True)
    server = ImageServer(sys.executable, ns.corpus_dir, work / "corpus.txt", corpus_size)
    results: list[RunResult] = []
    load_before = os.getloadavg()
    try:
        corpus = server.urls()
        lists = {
            "clean": write_list(work / "clean.txt", corpus[: ns.count]),
            "faulty": write_list(
                work / "faulty.txt", faulty_list(corpus[: ns.count], parse_faults(ns.faults))
            ),
        }
        print(
            f"image server {server.base_url}; {ns.count} urls per run, {ns.rounds} rounds; "
            f"processes={settings.processes}, img2dataset thread_count="
            f"{settings.img2dataset_threads}, ours thread_count={settings.ours_threads}, "
            f"number_sample_per_shard={settings.shard_size}; ours extra flags: {extra or '-'}",
            flush=True,
        )
        for name in [c for c in ns.corpora.split(",") if c]:
            for r in range(ns.rounds):
                for tool in ("ours", "img2dataset"):
                    out = runs_dir / f"{name}-{tool}-{r}"
                    if tool == "ours":
                        res = run_ours(ns.ours, lists[name], out, settings, extra, name, r)
                    else:
                        res = run_img2dataset(ns.img2dataset, lists[name], out, settings, name, r)
                    shutil.rmtree(out, ignore_errors=True)
                    results.append(res)
                    print(_line(res), flush=True)
        for count in rss_counts:
            path = write_list(work / f"rss-{count}.txt", cycled_list(corpus, count))
            out = runs_dir / f"rss-{count}"
            res = run_ours(ns.ours, path, out, settings, extra, f"rss-{count}", 0)
            shutil.rmtree(out, ignore_errors=True)
            results.append(res)
            print(_line(res), flush=True)
    finally:
        server.stop()
    report = summarize(results, settings, ns, load_before, os.getloadavg())
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report))
    print(f"\nresults: {work / 'results.json'}")
    return 0


def _line(r: RunResult) -> str:
    in_run = r.in_run_images_per_second
    cpu = r.cpu_ms_per_image
    return (
        f"  {r.corpus:<10} {r.tool:<12} round {r.round}: {r.successes}/{r.rows} ok in "
        f"{r.wall_seconds:.1f}s = {r.images_per_second:.0f} images/s"
        + (f", in-run {in_run:.0f}/s" if in_run is not None else "")
        + (f", {cpu:.1f} ms CPU/image" if cpu is not None else "")
        + f", peak RSS {r.peak_rss_main_mb or 0:.0f} MB (tree {r.peak_rss_tree_mb or 0:.0f} MB)"
    )


def summarize(
    results: list[RunResult],
    settings: Settings,
    ns: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> dict[str, object]:
    table: dict[str, dict[str, object]] = {}
    for corpus in sorted({r.corpus for r in results if not r.corpus.startswith("rss-")}):
        row: dict[str, object] = {}
        for tool in ("ours", "img2dataset"):
            mine = [r for r in results if r.corpus == corpus and r.tool == tool]
            row[tool] = {
                "images_per_second": round(median([r.images_per_second for r in mine]), 1),
                "in_run_images_per_second": round(
                    median([r.in_run_images_per_second or 0.0 for r in mine]), 1
                ),
                "cpu_ms_per_image": round(median([r.cpu_ms_per_image or 0.0 for r in mine]), 2),
                "successes": median([float(r.successes) for r in mine]),
                "rows": median([float(r.rows) for r in mine]),
            }
        ours, theirs = row["ours"], row["img2dataset"]
        assert isinstance(ours, dict) and isinstance(theirs, dict)
        row["ratio"] = (
            round(ours["images_per_second"] / theirs["images_per_second"], 2)
            if theirs["images_per_second"]
            else None
        )
        row["in_run_ratio"] = (
            round(ours["in_run_images_per_second"] / theirs["in_run_images_per_second"], 2)
            if theirs["in_run_images_per_second"]
            else None
        )
        row["cpu_ratio"] = (
            round(theirs["cpu_ms_per_image"] / ours["cpu_ms_per_image"], 2)
            if ours["cpu_ms_per_image"]
            else None
        )
        table[corpus] = row
    rss = {
        r.corpus.removeprefix("rss-"): {
            "rows": r.rows,
            "successes": r.successes,
            "seconds": round(r.wall_seconds, 1),
            "peak_rss_main_mb": round(r.peak_rss_main_mb or 0.0, 1),
            "peak_rss_tree_mb": round(r.peak_rss_tree_mb or 0.0, 1),
        }
        for r in results
        if r.corpus.startswith("rss-")
    }
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "settings": {
            "count": ns.count,
            "rounds": ns.rounds,
            "faults": ns.faults,
            "processes": settings.processes,
            "img2dataset_thread_count": settings.img2dataset_threads,
            "ours_thread_count": settings.ours_threads,
            "number_sample_per_shard": settings.shard_size,
        },
        "medians": table,
        "rss": rss,
        "runs": [r.as_dict() for r in results],
    }


def render(report: dict[str, object]) -> str:
    medians = report["medians"]
    rss = report["rss"]
    assert isinstance(medians, dict) and isinstance(rss, dict)
    lines = [
        f"{'':8} {'images/s (wall clock)':^27}   {'in-run images/s':^27}   "
        f"{'CPU ms per image':^22}",
        f"{'corpus':<8} {'ours':>7} {'img2dataset':>12} {'ratio':>6}   {'ours':>7} "
        f"{'img2dataset':>12} {'ratio':>6}   {'ours':>5} {'img2dataset':>11} {'ratio':>4}"
        "   ok/rows (ours, img2dataset)",
    ]
    for corpus, row in medians.items():
        o, t = row["ours"], row["img2dataset"]
        lines.append(
            f"{corpus:<8} {o['images_per_second']:>7.1f} {t['images_per_second']:>12.1f} "
            f"{_ratio(row['ratio']):>6}   {o['in_run_images_per_second']:>7.1f} "
            f"{t['in_run_images_per_second']:>12.1f} {_ratio(row['in_run_ratio']):>6}   "
            f"{o['cpu_ms_per_image']:>5.1f} {t['cpu_ms_per_image']:>11.1f} "
            f"{_ratio(row['cpu_ratio']):>4}   "
            f"{o['successes']:.0f}/{o['rows']:.0f}, {t['successes']:.0f}/{t['rows']:.0f}"
        )
    lines.append(
        "medians; images/s = successful images / wall clock of the whole command (start-up"
        " included); in-run = each tool's own clock; CPU = user+system of the process tree"
        " per successful image (ratio: img2dataset / ours)"
    )
    for count, r in rss.items():
        lines.append(
            f"peak RSS, ours, {count} urls: {r['peak_rss_main_mb']:.0f} MB main process, "
            f"{r['peak_rss_tree_mb']:.0f} MB with its workers ({r['seconds']}s)"
        )
    return "\n".join(lines)


def _ratio(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else "-"


if __name__ == "__main__":
    sys.exit(main())
