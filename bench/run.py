"""`make bench`: our embedded download, our service mode and our distributed mode against
img2dataset on the same url lists.

    python -m bench.run --img2dataset .venv-bench/bin/img2dataset [--count 3000 --rounds 3]
        [--corpora clean,faulty,404] [--count-404 20000]
        [--tools download,service,kafka,img2dataset] [--rss-counts 10000,100000,1000000]

Starts the local image server over a warm, cached corpus; for each corpus runs the tools in
turn, round after round, into fresh output folders with the same settings:
- corpora: `clean` (--count photos), `faulty` (the same with --faults), `404` (--count-404
  distinct urls that all answer 404: what a failing row costs);
- tools: `download` (our embedded mode), `service` (`img2dataset service` and `img2dataset
  enqueue --wait` launched together), `kafka` (`img2dataset serve fetcher|appender|materializer`
  over a Tansu broker and PostgreSQL, fed by `img2dataset enqueue --wait`: bench/kafka.py),
  `img2dataset` (1.47, --img2dataset);
then our download alone on lists of --rss-counts urls that all answer 404 (fast to go through),
for its peak RSS by list size and the growth per 100k rows ('' skips them). Prints a line per
run, a table of medians (rows/s, images/s, in-run rows/s, CPU ms per row, each with its ratio
over our download and over img2dataset), the targets' ratios round by round, and writes the
figures to <work>/results.json. Timings are wall-clock on a shared machine: run it on an idle
one, and read the median and the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.breakdown import report as cpu_breakdown
from bench.harness import (
    ImageServer,
    RunResult,
    Settings,
    faulty_list,
    missing_list,
    ours_extra_flags,
    run_img2dataset,
    run_ours,
    run_service,
    write_list,
)
from bench.kafka import KafkaTool
from bench.report import MISSING, RSS, render, summarize

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAULTS = "missing=0.04,notimage=0.02,truncated=0.02,noai=0.02,slow=0.01"
# The rotation of each round, and the rows of the table.
TOOLS = ("download", "service", "kafka", "img2dataset")
CORPORA = ("clean", "faulty", MISSING)
# Segment size of the RSS runs (img2dataset's default number_sample_per_shard): the same at
# every list size, so only the list's size changes.
RSS_SHARD_SIZE = 10_000


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
    p.add_argument(
        "--count-404", type=int, default=20000, help="urls per timed run of the 404 corpus"
    )
    p.add_argument(
        "--corpora", default=",".join(CORPORA), help=f"which corpora to time ({', '.join(CORPORA)})"
    )
    p.add_argument(
        "--tools", default=",".join(TOOLS), help=f"which tools to run ({', '.join(TOOLS)})"
    )
    p.add_argument("--processes", type=int, default=2, help="CPU worker processes, both tools")
    p.add_argument("--img2dataset-threads", type=int, default=32, help="per process")
    p.add_argument(
        "--ours-threads",
        type=int,
        default=0,
        help="our --thread_count, rows in flight per worker process as img2dataset's threads "
        "(default: --img2dataset-threads, the same flags and rows in flight)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="number_sample_per_shard for all (default: the list's urls / (2 x processes), so "
        "every img2dataset process gets two shards)",
    )
    p.add_argument(
        "--service-idle-seconds",
        type=float,
        default=0.5,
        help="the service's --segment_idle_seconds (its default, 5 s, would add up to 5 idle "
        "seconds to a run whose list does not end on a full segment)",
    )
    p.add_argument(
        "--rss-counts",
        default="10000,100000,1000000",
        help="sizes of the 404 lists our download runs for peak RSS ('' to skip)",
    )
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--corpus-dir", type=Path, default=ROOT / ".cache" / "bench-corpus")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    settings = Settings(
        processes=ns.processes,
        img2dataset_threads=ns.img2dataset_threads,
        ours_threads=ns.ours_threads or ns.img2dataset_threads,
        shard_size=ns.shard_size or max(100, ns.count // (2 * ns.processes)),
    )
    tools = _choice(ns.tools, TOOLS, "--tools")
    corpora = _choice(ns.corpora, CORPORA, "--corpora")
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
    kafka = KafkaTool(ns.ours, extra, ns.service_idle_seconds)
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        if "kafka" in tools:
            stack.enter_context(kafka)  # PostgreSQL, for the whole bench
        corpus = server.urls()
        lists = {
            "clean": write_list(work / "clean.txt", corpus[: ns.count]),
            "faulty": write_list(
                work / "faulty.txt", faulty_list(corpus[: ns.count], parse_faults(ns.faults))
            ),
            MISSING: write_list(work / "404.txt", missing_list(server.base_url, ns.count_404)),
        }
        print(
            f"image server {server.base_url}; {ns.count} urls per run, {ns.rounds} rounds; "
            f"processes={settings.processes}, img2dataset thread_count="
            f"{settings.img2dataset_threads}, ours thread_count={settings.ours_threads}, "
            f"number_sample_per_shard={settings.shard_size} ({ns.count_404} urls, "
            f"{_for_list(settings, ns, ns.count_404).shard_size} for the 404 list); ours extra "
            f"flags: {extra or '-'}; service and kafka appender --segment_idle_seconds "
            f"{ns.service_idle_seconds}; tools {', '.join(tools)}; the machine may be shared: "
            f"load average {load_before[0]:.1f} now",
            flush=True,
        )
        for name in corpora:
            s = _for_list(settings, ns, ns.count_404 if name == MISSING else ns.count)
            for r in range(ns.rounds):
                for tool in tools:
                    out = runs_dir / f"{name}-{tool}-{r}"
                    if tool == "download":
                        res = run_ours(ns.ours, lists[name], out, s, extra, name, r)
                    elif tool == "service":
                        idle = ns.service_idle_seconds
                        res = run_service(ns.ours, lists[name], out, s, extra, name, r, idle)
                    elif tool == "kafka":
                        res = kafka.run(lists[name], out, s, name, r)
                    else:
                        res = run_img2dataset(ns.img2dataset, lists[name], out, s, name, r)
                    shutil.rmtree(out, ignore_errors=True)
                    results.append(res)
                    print(_line(res), flush=True)
        rss_settings = replace(settings, shard_size=RSS_SHARD_SIZE)
        for count in rss_counts:
            path = write_list(work / f"rss-{count}.txt", missing_list(server.base_url, count))
            out = runs_dir / f"rss-{count}"
            res = run_ours(ns.ours, path, out, rss_settings, extra, f"{RSS}{count}", 0)
            shutil.rmtree(out, ignore_errors=True)
            path.unlink()  # ~50 MB a million
            results.append(res)
            print(_line(res), flush=True)
    report = {
        **_header(settings, ns, tools, load_before, os.getloadavg()),
        **summarize(results, tools),
        "runs": [r.as_dict() for r in results],
    }
    # Where each image's CPU goes, beside the decode-resize-encode floor (breakdown.py).
    report["cpu_breakdown"], cpu_text = cpu_breakdown(
        [r.as_dict() for r in results], runs_dir, work / "clean.txt", ns.corpus_dir
    )
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report, tools))
    print(cpu_text)
    print(f"\nresults: {work / 'results.json'}")
    return 0


def _choice(spec: str, known: tuple[str, ...], flag: str) -> list[str]:
    chosen = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def _for_list(settings: Settings, ns: argparse.Namespace, count: int) -> Settings:
    """The settings of a list of `count` urls: --shard-size, else two shards per process."""
    return replace(settings, shard_size=ns.shard_size or max(100, count // (2 * ns.processes)))


def _header(
    settings: Settings,
    ns: argparse.Namespace,
    tools: list[str],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> dict[str, object]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "settings": {
            "count": ns.count,
            "count_404": ns.count_404,
            "rounds": ns.rounds,
            "tools": tools,
            "faults": ns.faults,
            "processes": settings.processes,
            "img2dataset_thread_count": settings.img2dataset_threads,
            "ours_thread_count": settings.ours_threads,
            "number_sample_per_shard": settings.shard_size,
            "service_segment_idle_seconds": ns.service_idle_seconds,
            "rss_number_sample_per_shard": RSS_SHARD_SIZE,
        },
    }


def _line(r: RunResult) -> str:
    cpu = 1000 * r.cpu_seconds / r.rows if r.cpu_seconds and r.rows else None
    return (
        f"  {r.corpus:<10} {r.tool:<12} round {r.round}: {r.successes}/{r.rows} ok in "
        f"{r.wall_seconds:.1f}s = {r.rows_per_second:.0f} rows/s, "
        f"{r.images_per_second:.0f} images/s"
        + (f", in-run {r.rows / r.in_run_seconds:.0f} rows/s" if r.in_run_seconds else "")
        + (f", {cpu:.2f} ms CPU/row" if cpu is not None else "")
        + f", peak RSS {r.peak_rss_main_mb or 0:.0f} MB (tree {r.peak_rss_tree_mb or 0:.0f} MB)"
    )


if __name__ == "__main__":
    sys.exit(main())
