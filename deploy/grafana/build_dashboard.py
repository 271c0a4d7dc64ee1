#!/usr/bin/env python3
"""Builds the img2dataset Grafana dashboard JSON from one description, for both places it ships:

- deploy/grafana/dashboards/img2dataset.json            provisioned by docker-compose's Grafana
- deploy/helm/img2dataset/dashboards/img2dataset.json   the chart's ConfigMap for the sidecar

A Helm chart can only read files inside itself, hence two copies; generating both keeps them
equal, and `make test` fails when either differs from this script's output.

    python deploy/grafana/build_dashboard.py           write both files
    python deploy/grafana/build_dashboard.py --check   exit 1 when a file is out of date

Panels name their datasource by uid (`prometheus`, as provisioned by compose and as
kube-prometheus-stack names its Prometheus); the chart can substitute another uid. Process
panels select series by the `component` label, which both the compose Prometheus config and the
chart's ServiceMonitor attach (fetcher, appender, materializer, status). Queries that select a
consumer group name it as the services do by default (`group="appender"`); the chart rewrites
those matchers to its `<service>.groupId` values.

The first row, Health, holds the panels the alerts of deploy/prometheus/build_rules.py link to
(each alert's `dashboard` annotation opens one of them by its panel id).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (
    ROOT / "deploy/grafana/dashboards/img2dataset.json",
    ROOT / "deploy/helm/img2dataset/dashboards/img2dataset.json",
)
UID = "img2dataset-pipeline"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
COMPONENT = 'component=~"fetcher|appender|materializer|status"'

# Metric names, in one place: the test checks each against what the services export.
FETCHER_ROWS = "img2dataset_fetcher_rows_total"
FETCHER_FAILURES = "img2dataset_fetcher_failures_total"
FETCHER_IN_FLIGHT = "img2dataset_fetcher_in_flight"
FETCHER_SECONDS = "img2dataset_fetcher_fetch_seconds"
FETCHER_BYTES = "img2dataset_fetcher_bytes_total"
APPENDER_RECORDS = "img2dataset_appender_records_total"
APPENDER_SEGMENTS = "img2dataset_appender_segments_closed_total"
APPENDER_SEGMENT_BYTES = "img2dataset_appender_segment_bytes"
APPENDER_COMMIT = "img2dataset_appender_commit_seconds"
APPENDER_OPEN_BYTES = "img2dataset_appender_open_segment_bytes"
APPENDER_FENCED = "img2dataset_appender_fenced_total"
APPENDER_POSITION_REFUSED = "img2dataset_appender_position_refused_total"
APPENDER_OFFSETS_SKIPPED = "img2dataset_appender_offsets_skipped_total"
APPENDER_OWNED = "img2dataset_appender_owned_partitions"
MATERIALIZER_SEGMENTS = "img2dataset_materializer_segments_total"
MATERIALIZER_SECONDS = "img2dataset_materializer_segment_seconds"
MATERIALIZER_LAG = "img2dataset_materializer_lag_seconds"
CONSUMER_LAG = "img2dataset_consumer_lag"
APPENDER_STOPPED = "img2dataset_appender_partitions_stopped"
APPENDER_RETRIES = "img2dataset_appender_retries_total"
APPENDER_ABANDONED = "img2dataset_appender_segments_abandoned_total"
APPENDER_PENDING = "img2dataset_appender_announcements_pending"
CONSUMER_EVENTS = "img2dataset_segment_consumer_events_total"
# Prometheus' own series for every target it scrapes (1 when the scrape succeeded).
UP = "up"

# Consumer groups as the services name them by default (the chart rewrites these matchers).
FETCHER_GROUP = 'group="fetcher"'
APPENDER_GROUP = 'group="appender"'
MATERIALIZER_GROUP = 'group="materializer"'

# Titles of the panels the alerts link to (build_rules.py finds their ids by these).
SERVICES_UP = "Services up"
APPEND_PARTITIONS = "APPEND partitions"
BACKLOG = "Backlog per consumer group"
FAILURE_RATIO = "Fetch failure ratio by reason"
APPENDER_ERRORS = "Appender retries and abandoned segments"
DATA_LOST = "Rows lost upstream, commits lost by the index"
SEGMENT_EVENTS = "SEGMENT_CLOSED events by outcome"
COMMIT_LATENCY = "Commit latency"


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def quantiles(metric: str, label: str) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{RATE}])))", f"{label} p{p}")
        for q, p in ((0.5, 50), (0.95, 95))
    ]


def panel(
    title: str,
    description: str,
    unit: str,
    queries: list[tuple[str, str]],
    *,
    stack: bool = False,
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)
        ],
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def sections() -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        (
            "Health",
            [
                panel(
                    SERVICES_UP,
                    "Targets Prometheus scrapes per component, how many answered the last "
                    "scrape, and whether every readiness check passes (as /readyz says). A "
                    "target that does not answer is down or wedged; a component with no target "
                    "at all is not running; one that answers but is not ready waits for a "
                    "dependency or a partition.",
                    "short",
                    [
                        (f"sum by (component) ({UP}{{{COMPONENT}}})", "{{component}} up"),
                        (f"count by (component) ({UP}{{{COMPONENT}}})", "{{component}} targets"),
                        (
                            f"min by (component) (img2dataset_readiness_check{{{COMPONENT}}})",
                            "{{component}} readiness checks pass (1) or one fails (0)",
                        ),
                    ],
                ),
                panel(
                    APPEND_PARTITIONS,
                    "APPEND partitions owned by the appenders (all of them should be), "
                    "partitions stopped on a permanent error (none should be), and the "
                    "records waiting on each partition: a partition nobody owns, or a stopped "
                    "one, only grows.",
                    "short",
                    [
                        (f"sum({APPENDER_OWNED})", "owned"),
                        (f"sum({APPENDER_STOPPED})", "stopped"),
                        (
                            f"max by (partition) ({CONSUMER_LAG}{{{APPENDER_GROUP}}})",
                            "waiting on {{partition}}",
                        ),
                    ],
                ),
                panel(
                    BACKLOG,
                    "Records not yet consumed per consumer group (urls: the fetchers, APPEND: "
                    "the appenders, SEGMENT_CLOSED: the materializer), and the fetchers "
                    "running. A backlog that grows while the fetchers are at their maximum "
                    "needs more capacity or a slower producer.",
                    "short",
                    [
                        (f"sum by (group) ({CONSUMER_LAG})", "{{group}} backlog"),
                        (f'count({UP}{{component="fetcher"}} == 1)', "fetchers up"),
                    ],
                ),
                panel(
                    FAILURE_RATIO,
                    "Failed rows of each reason over all rows the fetchers answered: a reason "
                    "that jumps far above its usual share (dns, timeout, http_4xx, "
                    "blocked_address, host_circuit_open...) points at the cause.",
                    "percentunit",
                    [
                        (
                            f"sum by (reason) (rate({FETCHER_FAILURES}[{RATE}]))"
                            f" / ignoring (reason) group_left sum(rate({FETCHER_ROWS}[{RATE}]))",
                            "{{reason}}",
                        )
                    ],
                ),
                panel(
                    APPENDER_ERRORS,
                    "Transient failures the appenders retried, by operation (store write, "
                    "store read, store complete, acquire, dedup lookup, index commit, announce, "
                    "kafka_commit); open segments thrown away and re-read from the committed "
                    "offset, by reason; committed segments whose SEGMENT_CLOSED is not "
                    "acknowledged yet.",
                    "short",
                    [
                        (
                            f"sum by (operation) (rate({APPENDER_RETRIES}[{RATE}]))",
                            "retries: {{operation}}",
                        ),
                        (
                            f"sum by (reason) (rate({APPENDER_ABANDONED}[{RATE}]))",
                            "abandoned: {{reason}}",
                        ),
                        (f"sum({APPENDER_PENDING})", "announcements pending"),
                    ],
                ),
                panel(
                    DATA_LOST,
                    "APPEND offsets the appenders found gone from the bus (deleted by the "
                    "topic's retention before they were appended: their rows are in no "
                    "segment and no failed sample, lost until enqueued again), and segment "
                    "commits the index refused because its next_offset was not where the "
                    "appender resumed (PostgreSQL lost commits it had acknowledged; the "
                    "appender re-reads the partition by itself). Both stay at 0 in a healthy "
                    "pipeline.",
                    "short",
                    [
                        (
                            f"sum by (instance) (increase({APPENDER_OFFSETS_SKIPPED}[{RATE}]))",
                            "rows lost upstream {{instance}}",
                        ),
                        (
                            f"sum by (instance) (increase({APPENDER_POSITION_REFUSED}[{RATE}]))",
                            "commits refused: the index lost commits {{instance}}",
                        ),
                    ],
                ),
                panel(
                    SEGMENT_EVENTS,
                    "SEGMENT_CLOSED events taken by each segment consumer (the materializer "
                    "and your own), by outcome: handled, or skipped as malformed or as a "
                    "segment the index does not hold.",
                    "ops",
                    [
                        (
                            f"sum by (group, outcome) (rate({CONSUMER_EVENTS}[{RATE}]))",
                            "{{group}} {{outcome}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Throughput",
            [
                panel(
                    "Throughput per stage",
                    "Input rows acknowledged by the fetchers, APPEND records consumed by the "
                    "appenders, segments materialized (per second).",
                    "ops",
                    [
                        (f"sum(rate({FETCHER_ROWS}[{RATE}]))", "fetcher rows/s"),
                        (f"sum(rate({APPENDER_RECORDS}[{RATE}]))", "appender records/s"),
                        (f"sum(rate({MATERIALIZER_SEGMENTS}[{RATE}]))", "materializer segments/s"),
                    ],
                ),
                panel(
                    "Failures by reason",
                    "Rows that became failed samples, by reason (the kind of their error "
                    "message); APPEND records the appender could not read; segment commits "
                    "refused to a fenced (stale) owner.",
                    "ops",
                    [
                        (
                            f"sum by (reason) (rate({FETCHER_FAILURES}[{RATE}]))",
                            "{{reason}}",
                        ),
                        (
                            f'sum by (outcome) (rate({APPENDER_RECORDS}{{outcome="malformed"}}'
                            f"[{RATE}]))",
                            "appender {{outcome}}",
                        ),
                        (f"sum(rate({APPENDER_FENCED}[{RATE}]))", "fenced commits"),
                    ],
                    stack=True,
                ),
                panel(
                    "Bytes per second",
                    "Image bytes downloaded by the fetchers and segment bytes committed by the "
                    "appenders.",
                    "Bps",
                    [
                        (f"sum(rate({FETCHER_BYTES}[{RATE}]))", "downloaded"),
                        (f"sum(rate({APPENDER_SEGMENT_BYTES}_sum[{RATE}]))", "stored in segments"),
                    ],
                ),
            ],
        ),
        (
            "Latency",
            [
                panel(
                    "Fetch latency",
                    "Time to download one URL (p50, p95).",
                    "s",
                    quantiles(FETCHER_SECONDS, "fetch"),
                ),
                panel(
                    COMMIT_LATENCY,
                    "Segment close to index commit and SEGMENT_CLOSED announcement (appender); "
                    "time to materialize one segment, and a segment's age when materialized.",
                    "s",
                    [
                        *quantiles(APPENDER_COMMIT, "commit"),
                        *quantiles(MATERIALIZER_SECONDS, "materialize"),
                        (f"max({MATERIALIZER_LAG})", "materializer lag"),
                    ],
                ),
                panel(
                    "Segments closed",
                    "Segments committed to the index and segments materialized, per minute.",
                    "short",
                    [
                        (f"sum(rate({APPENDER_SEGMENTS}[{RATE}])) * 60", "closed / min"),
                        (f"sum(rate({MATERIALIZER_SEGMENTS}[{RATE}])) * 60", "materialized / min"),
                    ],
                ),
            ],
        ),
        (
            "Backlog",
            [
                panel(
                    "Consumer lag per group and partition",
                    "Records not yet consumed, per consumer group, topic and partition. The "
                    "fetchers' lag on `urls` is what the chart's KEDA ScaledObject scales on.",
                    "short",
                    [
                        (
                            f"sum by (group, topic, partition) ({CONSUMER_LAG})",
                            "{{group}} {{topic}}/{{partition}}",
                        )
                    ],
                    stack=True,
                ),
                panel(
                    "In flight",
                    "Rows handed to each fetcher's workers and not answered yet (being "
                    "downloaded or processed, or queued to start next); APPEND partitions owned "
                    "per appender.",
                    "short",
                    [
                        (f"sum by (instance) ({FETCHER_IN_FLIGHT})", "fetching {{instance}}"),
                        (f"sum by (instance) ({APPENDER_OWNED})", "partitions {{instance}}"),
                    ],
                ),
                panel(
                    "Open segments",
                    "Bytes appended to segments not yet closed, per appender.",
                    "bytes",
                    [(f"sum by (instance) ({APPENDER_OPEN_BYTES})", "{{instance}}")],
                ),
            ],
        ),
        (
            "Processes",
            [
                panel(
                    "CPU",
                    "CPU used by each process (1 = one core).",
                    "percentunit",
                    [
                        (
                            f"rate(process_cpu_seconds_total{{{COMPONENT}}}[{RATE}])",
                            "{{component}} {{instance}}",
                        )
                    ],
                ),
                panel(
                    "Memory",
                    "Resident memory of each process.",
                    "bytes",
                    [
                        (
                            f"process_resident_memory_bytes{{{COMPONENT}}}",
                            "{{component}} {{instance}}",
                        )
                    ],
                ),
            ],
        ),
    ]


def layout(groups: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Rows of three 8-wide panels under a row header; ids in order, so the JSON is stable."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, members in groups:
        panels.append({**row(title), "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        for i, member in enumerate(members):
            x, line = (i % 3) * 8, i // 3
            panels.append({**member, "gridPos": {"h": 8, "w": 8, "x": x, "y": y + line * 8}})
        y += ((len(members) + 2) // 3) * 8
    for number, p in enumerate(panels, start=1):
        p["id"] = number
    return panels


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "img2dataset pipeline",
        "description": "Fetchers, appenders and materializers of img2dataset-segments.",
        "tags": ["img2dataset"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [],
        "panels": layout(sections()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is out of date")
    ns = parser.parse_args(argv)
    text = render()
    stale = [p for p in OUTPUTS if not p.exists() or p.read_text() != text]
    if ns.check:
        for p in stale:
            print(
                f"out of date: {p.relative_to(ROOT)} (run {Path(__file__).name})", file=sys.stderr
            )
        return 1 if stale else 0
    for p in OUTPUTS:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
