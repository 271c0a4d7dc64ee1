"""`make bench`: our embedded download and our service mode against img2dataset on the same url
lists.

    python -m bench.run --img2dataset .venv-bench/bin/img2dataset [--count 3000 --rounds 3]

Starts the local image server over a warm, cached corpus; for each corpus (clean, faulty) runs
the three in turn (our download; our service: `img2dataset service` and `img2dataset enqueue
--wait` launched together; img2dataset; then again) into fresh output folders with the same
settings; then our download alone at two list sizes for peak RSS. Prints a table and writes the
figures to <work>/results.json. Timings are wall-clock on a shared machine: run it on an idle
one, and read the median.
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

from bench.breakdown import report as cpu_breakdown
from bench.harness import (
    ImageServer,
    RunResult,
    Settings,
    cycled_list,
    faulty_list,
    ours_extra_flags,
    run_img2dataset,
    run_ours,
    run_service,
    write_list,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAULTS = "missing=0.04,notimage=0.02,truncated=0.02,noai=0.02,slow=0.01"
# The rotation of each round, and the rows of the table.
TOOLS = ("download", "service", "img2dataset")


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
    p.add_argument("--rounds", type=int, default=3, help="runs of each of the three per corpus")
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
        "--service-idle-seconds",
        type=float,
        default=0.5,
        help="the service's --segment_idle_seconds (its default, 5 s, would add up to 5 idle "
        "seconds to a run whose list does not end on a full segment)",
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
            f"number_sample_per_shard={settings.shard_size}; ours extra flags: {extra or '-'}; "
            f"service --segment_idle_seconds {ns.service_idle_seconds}",
            flush=True,
        )
        for name in [c for c in ns.corpora.split(",") if c]:
            for r in range(ns.rounds):
                for tool in TOOLS:
                    out = runs_dir / f"{name}-{tool}-{r}"
                    if tool == "download":
                        res = run_ours(ns.ours, lists[name], out, settings, extra, name, r)
                    elif tool == "service":
                        idle = ns.service_idle_seconds
                        res = run_service(ns.ours, lists[name], out, settings, extra, name, r, idle)
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
    # Where each image's CPU goes, beside the decode-resize-encode floor (breakdown.py).
    report["cpu_breakdown"], cpu_text = cpu_breakdown(
        [r.as_dict() for r in results], runs_dir, work / "clean.txt", ns.corpus_dir
    )
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report))
    print(cpu_text)
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


# The figures of a tool, and whether higher is better: each ratio is put so that above 1 is
# better for the tool it is about (for CPU, the other's CPU over this one's).
FIGURES = (
    ("images_per_second", True),
    ("in_run_images_per_second", True),
    ("cpu_ms_per_image", False),
)
# (tool, other): the ratios of the summary, "tool/other".
PAIRS = (("download", "img2dataset"), ("service", "download"), ("service", "img2dataset"))
# What a user relies on: the service mode at this fraction of download's images/s or above.
SERVICE_TARGET = 0.9


def _medians(runs: list[RunResult]) -> dict[str, float]:
    return {
        "images_per_second": round(median([r.images_per_second for r in runs]), 1),
        "in_run_images_per_second": round(
            median([r.in_run_images_per_second or 0.0 for r in runs]), 1
        ),
        "cpu_ms_per_image": round(median([r.cpu_ms_per_image or 0.0 for r in runs]), 2),
        "successes": median([float(r.successes) for r in runs]),
        "rows": median([float(r.rows) for r in runs]),
    }


def _ratios(mine: dict[str, float], other: dict[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, higher in FIGURES:
        a, b = (mine[key], other[key]) if higher else (other[key], mine[key])
        out[key] = round(a / b, 2) if a and b else None
    return out


def _by_round(results: list[RunResult], corpus: str, tool: str, other: str) -> list[float]:
    """images/s of `tool` over `other`'s in the same round: the two ran one after the other,
    so what else loads the machine moves both less than it moves the medians."""
    out = []
    for mine in (r for r in results if r.corpus == corpus and r.tool == tool):
        theirs = [r for r in results if (r.corpus, r.tool, r.round) == (corpus, other, mine.round)]
        if theirs and theirs[0].images_per_second:
            out.append(round(mine.images_per_second / theirs[0].images_per_second, 2))
    return out


def summarize(
    results: list[RunResult],
    settings: Settings,
    ns: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> dict[str, object]:
    table: dict[str, dict[str, object]] = {}
    for corpus in sorted({r.corpus for r in results if not r.corpus.startswith("rss-")}):
        tools = {
            t: _medians([r for r in results if r.corpus == corpus and r.tool == t]) for t in TOOLS
        }
        ratios = {f"{a}/{b}": _ratios(tools[a], tools[b]) for a, b in PAIRS}
        table[corpus] = {
            **tools,
            "ratios": ratios,
            "service/download_by_round": _by_round(results, corpus, "service", "download"),
        }
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
            "service_segment_idle_seconds": ns.service_idle_seconds,
        },
        "medians": table,
        "rss": rss,
        "runs": [r.as_dict() for r in results],
    }


def render(report: dict[str, object]) -> str:
    medians = report["medians"]
    rss = report["rss"]
    assert isinstance(medians, dict) and isinstance(rss, dict)
    block = f"{'median':>7} {'vs dl':>6} {'vs i2d':>6}"
    lines = [
        f"{'':21} {'images/s (wall clock)':^21}   {'in-run images/s':^21}   "
        f"{'CPU ms per image':^21}",
        f"{'corpus':<8} {'tool':<12} {block}   {block}   {block}   ok/rows",
    ]
    for corpus, row in medians.items():
        ratios = row["ratios"]
        for tool in TOOLS:
            figures = row[tool]
            vs_dl = ratios.get(f"{tool}/download", {})
            vs_i2d = ratios.get(f"{tool}/img2dataset", {})
            cells = [
                f"{figures[key]:>7.{2 if key == 'cpu_ms_per_image' else 1}f} "
                f"{_ratio(vs_dl.get(key)):>6} {_ratio(vs_i2d.get(key)):>6}"
                for key, _ in FIGURES
            ]
            lines.append(
                f"{corpus:<8} {tool:<12} {'   '.join(cells)}   "
                f"{figures['successes']:.0f}/{figures['rows']:.0f}"
            )
    lines += [
        "medians; images/s = successful images / wall clock of the whole command (start-up"
        " included); in-run = each tool's own clock; CPU = user+system of the process trees per"
        " successful image; service = `img2dataset service` and `img2dataset enqueue --wait`"
        " launched together, timed until the enqueue returns (every row in the index);"
        " vs dl / vs i2d = this row over our download / over img2dataset (CPU: theirs over this"
        " row's), above 1 is better",
        "service / download, images/s (median; each round's): "
        + ", ".join(
            f"{corpus} {_ratio(row['ratios']['service/download']['images_per_second'])} "
            f"({' '.join(_ratio(v) for v in row['service/download_by_round'])})"
            for corpus, row in medians.items()
        )
        + f"; target: {SERVICE_TARGET:.2f}x or more",
    ]
    for count, r in rss.items():
        lines.append(
            f"peak RSS, our download, {count} urls: {r['peak_rss_main_mb']:.0f} MB main process, "
            f"{r['peak_rss_tree_mb']:.0f} MB with its workers ({r['seconds']}s)"
        )
    return "\n".join(lines)


def _ratio(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else "-"


if __name__ == "__main__":
    sys.exit(main())
