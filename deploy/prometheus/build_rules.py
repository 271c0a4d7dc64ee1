#!/usr/bin/env python3
"""Builds the img2dataset Prometheus rules (alerts and the recording rules they use) from one
description, for both places they ship:

- deploy/prometheus/rules/img2dataset.rules.yml           loaded by docker-compose's Prometheus
- deploy/helm/img2dataset/rules/img2dataset.rules.yml     the chart's PrometheusRule
                                                          (metrics.prometheusRule.enabled)

A Helm chart can only read files inside itself, hence two copies; generating both keeps them
equal, and `make test` fails when either differs from this script's output.

    python deploy/prometheus/build_rules.py            write both files
    python deploy/prometheus/build_rules.py --check    exit 1 when a file is out of date
    python deploy/prometheus/build_rules.py --time-scale 60 --output FILE
                                                       a copy whose durations run 60x faster

Every alert carries `severity` (critical: data stops moving, or is lost; warning: it moves
badly), and the
annotations `summary`, `description`, `runbook` (what to look at and what to do, in order) and
`dashboard`: a link to the panel of the Grafana dashboard (deploy/grafana/build_dashboard.py)
that shows what the alert measures. Links point at the compose Grafana (http://localhost:3000);
the chart rewrites that prefix to `metrics.prometheusRule.grafanaUrl`.

Durations are production values (minutes). `--time-scale N` divides every `for:` and every
PromQL range, subquery step and offset by N and changes nothing else (the end-to-end test runs
the same expressions on a real Prometheus that scrapes every second); thresholds on values
(a lag in seconds, a count) stay as they are. The promtool unit tests
(tests/deploy/prometheus/) exercise the real durations.

Consumer groups are selected as the services name them by default (`group="appender"`); the
chart rewrites those matchers to its `<service>.groupId` values, and the recording rule
`img2dataset:fetcher_replicas:max` (the most fetchers that can run: compose has no autoscaler,
so whatever runs is the most there will be, hence 1) to its replica count or autoscaling
maximum.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (
    ROOT / "deploy/prometheus/rules/img2dataset.rules.yml",
    ROOT / "deploy/helm/img2dataset/rules/img2dataset.rules.yml",
)
GROUP = "img2dataset"
# Where the compose Grafana serves the dashboard; the chart replaces this prefix.
GRAFANA_URL = "http://localhost:3000"
FETCHER_MAX = "img2dataset:fetcher_replicas:max"
FAILURE_RATIO = "img2dataset:fetcher_failure_ratio:rate10m"


def _dashboard_module() -> ModuleType:
    path = ROOT / "deploy/grafana/build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


D = _dashboard_module()
COMPONENTS = 'component=~"fetcher|appender|materializer|status"'


def panel_link(title: str) -> str:
    """The dashboard URL that opens the panel titled `title` on its own."""
    for p in D.layout(D.sections()):
        if p["title"] == title and p["type"] != "row":
            return f"{GRAFANA_URL}/d/{D.UID}/{D.UID}?viewPanel={p['id']}"
    raise KeyError(f"no dashboard panel titled {title!r}")


def event_count(
    metric: str, selector: str, window: str, by: str, *, new_targets: bool = False
) -> str:
    """Events of a labelled counter within `window`, by `by`. prometheus-client creates a
    label's series at its first increment, already at 1, which `increase()` cannot see (there
    is no earlier sample); so a series that did not exist `window` ago counts with its value,
    provided its target was scraped then (else it is Prometheus that is new, not the series:
    after a Prometheus restart, old counts must not fire).

    `new_targets`: a new series counts as long as Prometheus scraped anything `window` ago,
    even if not its target: for events that happen as a process starts, before its first
    scrape (an appender back from an outage, in a pod or container with a new address, counts
    the offsets it finds gone at once). A long-running target Prometheus only now discovers
    would fire with its old counts: only for events too costly to miss."""
    series = f"{metric}{{{selector}}}" if selector else metric
    scraped = (
        f"on () (count(up offset {window}) > 0)"
        if new_targets
        else f"on (instance) (up offset {window})"
    )
    return (
        f"sum by ({by}) (increase({series}[{window}])) > 0\n"
        f"or\n"
        f"sum by ({by}) (\n"
        f"  ({series} unless {series} offset {window})\n"
        f"  and {scraped}\n"
        f") > 0"
    )


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str | None  # `for:`; None fires at the first evaluation
    severity: str
    summary: str
    description: str
    runbook: str
    panel: str  # title of the dashboard panel that explains it

    def rule(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.name, "expr": self.expr.strip() + "\n"}
        if self.duration:
            out["for"] = self.duration
        out["labels"] = {"severity": self.severity}
        out["annotations"] = {
            "summary": self.summary,
            "description": " ".join(self.description.split()),
            "runbook": _paragraphs(self.runbook),
            "dashboard": panel_link(self.panel),
        }
        return out


def _paragraphs(text: str) -> str:
    """Numbered steps, each joined on one line, one step per line."""
    steps = re.split(r"\n\s*\n", text.strip())
    return "\n".join(" ".join(step.split()) for step in steps) + "\n"


def recording_rules() -> list[dict[str, Any]]:
    return [
        {
            # Overridden by the chart: fetcher.autoscaling.maxReplicas, or fetcher.replicaCount.
            "record": FETCHER_MAX,
            "expr": "vector(1)",
        },
        {
            "record": FAILURE_RATIO,
            "expr": (
                f"sum by (reason) (rate({D.FETCHER_FAILURES}[10m]))\n"
                f"/ ignoring (reason) group_left\n"
                f"sum(rate({D.FETCHER_ROWS}[10m]))\n"
            ),
        },
    ]


def alerts() -> list[Alert]:
    lag = D.CONSUMER_LAG
    urls_lag = f"sum({lag}{{{D.FETCHER_GROUP}}})"
    closed_lag = f"sum({lag}{{{D.MATERIALIZER_GROUP}}})"
    fetchers_up = 'count(up{component="fetcher"} == 1) or vector(0)'
    return [
        # --- APPEND partitions: the single writer of each partition ------------------------
        Alert(
            "Img2datasetAppendPartitionStopped",
            f"{D.APPENDER_STOPPED} > 0",
            "1m",
            "critical",
            "{{ $labels.instance }} stopped APPEND partitions on a permanent error",
            """An appender stopped one or more APPEND partitions after a store or index operation
            failed `commit_attempts` times in a row. Their records wait in Kafka (nothing after
            the partition's committed offset is skipped) and the appender's /readyz answers
            503 until it is restarted.""",
            """1. Find the line with `STOPPED at offset <N>: <operation> failed <k> times:
            <error>` in the appender's log: the partition, the operation and its error.

            2. Fix the cause: the store (S3 reachable, bucket and credentials valid) for
            `store ...` operations, PostgreSQL (reachable, writable, not out of disk) for
            `acquire`, `dedup lookup` and `index commit`.

            3. Restart that appender (its pod or container). It takes the partition again at
            the index's next_offset and appends from there: no record is lost or written
            twice.""",
            D.APPEND_PARTITIONS,
        ),
        Alert(
            "Img2datasetAppendPartitionsUnowned",
            # The partition count comes from the status service's lag series (one per APPEND
            # partition); without it, at least one partition must be owned.
            f"""
(count(count by (partition) ({lag}{{{D.APPENDER_GROUP}}})) or vector(1))
-
(sum({D.APPENDER_OWNED}) or vector(0))
> 0
""",
            "5m",
            "critical",
            "{{ $value }} APPEND partitions have no appender",
            """Fewer APPEND partitions are owned by a running appender than the topic has. The
            records of an unowned partition are not written to segments: the dataset stops
            growing for the rows they hold.""",
            """1. On the Services up panel: are the appenders running and answering scrapes?
            Img2datasetServiceDown or Img2datasetServiceMissing fire along with this one when
            they are not; restart them.

            2. If they run: their logs say whether they join the consumer group (the broker
            reachable, I2D_KAFKA_CONFIG valid). A member that died without leaving holds its
            partitions until `session.timeout.ms` runs out (45 s by default).

            3. Run as many appenders as APPEND has partitions at most (the chart refuses
            more); with fewer, each owns several. The records wait in Kafka within its
            retention: check that retention outlasts the outage.""",
            D.APPEND_PARTITIONS,
        ),
        Alert(
            "Img2datasetAppenderNotReady",
            f"{D.APPENDER_OWNED} == 0",
            "15m",
            "warning",
            "{{ $labels.instance }} owns no APPEND partition",
            """An appender has owned no APPEND partition for 15 minutes, so its /readyz answers
            503: it has not joined the consumer group, or there are more appenders than
            partitions and it has nothing to do.""",
            """1. Compare the appenders running with APPEND's partition count: an appender
            beyond the partition count stays idle; scale down to the partition count.

            2. Otherwise read its log: a member that cannot reach the broker, or whose
            partitions cannot be taken in the index (`cannot take ... yet`), owns nothing.
            Fix the broker or index connection and restart it.""",
            D.APPEND_PARTITIONS,
        ),
        # --- Data lost: records the bus deleted, commits the index lost -----------------------
        Alert(
            "Img2datasetAppendRowsLostUpstream",
            event_count(D.APPENDER_OFFSETS_SKIPPED, "", "1h", "instance", new_targets=True),
            None,
            "critical",
            "{{ $labels.instance }} found APPEND records deleted before they were appended: "
            "their rows are lost",
            """An appender reading an APPEND partition on from the last offset it holds found
            the records from there on already deleted from Kafka: the topic's retention ran
            out before they were appended (an appender outage, or a backlog, longer than
            retention.ms). Or, rarer, the broker held records it did not deliver, even when
            the partition was read again from them. Their rows were fetched but are in no
            segment, and no failed sample records them: they are missing from the dataset
            until enqueued again. Critical
            although the pipeline goes on: this is data lost, not data waiting. Fires at the
            first such offset and for an hour after the last one.""",
            """1. Find the lost offsets in the appender's log: `<partition>: offsets A..B are
            gone from the bus (retention shorter than the appender's delay?)` or `the bus
            holds offsets A..B but does not deliver them`, one line per gap
            (img2dataset_appender_offsets_skipped_total counts them).

            2. Keep it from happening again: raise the APPEND topic's retention.ms well above
            the longest appender outage or backlog you may have (`kafka-configs.sh --alter
            --entity-type topics --entity-name <APPEND topic> --add-config
            retention.ms=<ms>`; retention.bytes -1 or as large), and make sure appenders run
            (Img2datasetAppendPartitionsUnowned, Img2datasetAppendPartitionStopped).

            3. Get the rows back once the backlog has drained (Backlog per consumer group at
            0): run the same `img2dataset enqueue --url_list <list> ...` again, with the same
            options and index. It skips every row the index records and sends the rest, the
            lost rows among them (`--retry_failed` does not apply: they were never recorded
            as failed); a row still in flight is sent twice and stays one sample. Rows sent
            to `urls` by other means (kafka-console-producer) must be sent again the same
            way.""",
            D.DATA_LOST,
        ),
        Alert(
            "Img2datasetIndexLostCommits",
            event_count(D.APPENDER_POSITION_REFUSED, "", "1h", "instance", new_targets=True),
            None,
            "critical",
            "{{ $labels.instance }}: the index refused a segment commit: it lost commits it "
            "had acknowledged",
            """The index (PostgreSQL) refused a segment commit because its next_offset for the
            partition is not where the appender resumed: it lost transactions it had
            acknowledged (a crash with synchronous_commit=off, a restore from a backup, a
            failover to an asynchronous replica). The appender recovers by itself: it takes
            the partition again under a new epoch and re-reads from the index's next_offset.
            Critical although nothing waits: acknowledged data was lost. Segments already
            announced are gone from the index, rows whose claim-check payloads had been
            deleted became failed samples (`appender: claim-check payload ... is gone`), and
            a loss reaching back past the APPEND topic's retention loses rows for good
            (Img2datasetAppendRowsLostUpstream). Until the database is fixed, every crash or
            failover can do it again. Fires at the first refusal and for an hour after the
            last one.""",
            """1. Find the refusals in the appender's log: `segment <id> refused, re-reading
            <partition>: ...`. The appender has already taken the partition again and
            re-reads it from the index's next_offset: there is nothing to restart.

            2. Find why PostgreSQL lost acknowledged commits, and fix it: `SHOW
            synchronous_commit;` must say `on` (`ALTER SYSTEM SET synchronous_commit = on;
            SELECT pg_reload_conf();`, and no override for the img2dataset role or database);
            fsync and full_page_writes on. With replicas, fail over only to a synchronous one:
            set synchronous_standby_names (e.g. `ANY 1 (replica1, replica2)`) so that a commit
            waits for a standby. A restore from a backup loses what came after it: restore to
            the end of the WAL (point-in-time recovery) instead.

            3. Clean up: the lost segments' objects are garbage no commit names: `img2dataset
            gc` lists them (`--delete` removes them once older than --grace_seconds);
            `img2dataset verify` checks that the committed segments and the index agree;
            consumers skip the lost segments' SEGMENT_CLOSED events as unknown_segment
            (Img2datasetSegmentEventsSkipped), and `img2dataset materialize` brings sidecars
            and manifests up to date.

            4. Rows that became failed samples with `appender: claim-check payload ... is
            gone`: that reason is not transient, so `img2dataset enqueue --url_list <list>
            --retry_failed all` fetches them again (with every other failed row of the
            list).""",
            D.DATA_LOST,
        ),
        # --- Backlog --------------------------------------------------------------------------
        Alert(
            "Img2datasetUrlsLagGrowing",
            # The lag grows, and the fetchers cannot scale further: as many run as the
            # autoscaler may start (img2dataset:fetcher_replicas:max), or none at all.
            f"""
{urls_lag} > 0
and on ()
deriv({urls_lag}[15m:1m]) > 0
and on ()
(
  ({fetchers_up}) >= on () {FETCHER_MAX}
  or
  ({fetchers_up}) == 0
)
""",
            "15m",
            "warning",
            "urls lag has grown for 15 minutes with the fetchers at their maximum "
            "({{ $value }} rows waiting)",
            """The rows waiting on the urls topic have grown for 15 minutes while as many
            fetchers run as can (the autoscaler's maximum, or the fixed replica count), or
            none runs at all. The fetchers download slower than rows are enqueued; the
            backlog only ends when enqueuing stops.""",
            """1. On the Backlog panel: the fetchers' backlog and the fetchers up.

            2. If no fetcher runs: the autoscaler (KEDA) did not start any; check its
            ScaledObject and the Kafka connection it uses.

            3. If they all run: are they busy? Throughput per stage and Fetch latency show
            whether downloads got slower (slow or dead hosts: Fetch failure ratio by reason).
            Raise fetcher.autoscaling.maxReplicas (at most the urls partition count), or
            I2D_THREAD_COUNT and the CPU of each fetcher.""",
            D.BACKLOG,
        ),
        Alert(
            "Img2datasetMaterializerBacklog",
            f"""
{closed_lag} > 10
or
(
  {closed_lag} > 0
  and on ()
  (sum(increase({D.MATERIALIZER_SEGMENTS}[15m])) or vector(0)) == 0
)
""",
            "15m",
            "warning",
            "the materializer is behind: {{ $value }} SEGMENT_CLOSED events waiting",
            """More than 10 committed segments have waited for the materializer for 15
            minutes, or some wait and it has materialized none in 15 minutes. Their metadata
            parquet, stats and the manifests (shards.txt, wids.json, summary.json) are out of
            date; the segments themselves are committed and readable.""",
            """1. On the Backlog panel: the materializer group's backlog; on Services up: is
            the materializer running?

            2. Read its log: it stops loudly after retrying a store or index error (fix the
            store or PostgreSQL, then restart it); a slow store makes each segment slow
            (Commit latency: materialize p95).

            3. It catches up by itself once running (`img2dataset materialize` brings the
            sidecars and manifests up to date by hand).""",
            D.BACKLOG,
        ),
        Alert(
            "Img2datasetMaterializerLagHigh",
            # Per instance: a materializer that has gone idle keeps its last lag.
            f"""
max(
  {D.MATERIALIZER_LAG} > 5400
  and on (instance)
  increase({D.MATERIALIZER_SEGMENTS}[15m]) > 0
)
""",
            "5m",
            "warning",
            "segments are materialized {{ $value | humanizeDuration }} after they opened",
            """The segments the materializer handled recently were materialized more than
            1.5 h after they were opened: longer than a segment may stay open
            (segment_max_age_seconds, 1 h by default) plus 30 minutes. Raise the threshold
            with segment_max_age_seconds.""",
            """1. On Commit latency: the materializer lag and the time to materialize one
            segment; on Backlog: the SEGMENT_CLOSED backlog.

            2. A slow store or index makes each segment slow; a backlog means events arrive
            faster than it handles them: look for store or index errors in its log.

            3. Sidecars and manifests lag behind meanwhile; the segments are already
            committed and readable.""",
            D.COMMIT_LATENCY,
        ),
        # --- Fetch failures -------------------------------------------------------------------
        Alert(
            "Img2datasetFetchFailureRatioHigh",
            f"""
{FAILURE_RATIO} > 0.05
and
{FAILURE_RATIO}
  > 3 * (avg_over_time({FAILURE_RATIO}[6h] offset 1h) or {FAILURE_RATIO} * 0)
and
sum by (reason) (increase({D.FETCHER_FAILURES}[10m])) > 20
""",
            "10m",
            "warning",
            "fetch failures of reason {{ $labels.reason }} are {{ $value | humanizePercentage }} "
            "of rows, far above their usual share",
            """Rows failing with this reason (dns, timeout, http_4xx, blocked_address,
            host_circuit_open...) have been above 5% of the rows answered, and more than 3
            times their usual share (over the 6 hours before the last one; a reason that had
            no failures then has none), for 10 minutes. Failed rows are recorded as failed
            samples with their error; nothing is lost, but they will not be images.""",
            """1. On Fetch failure ratio by reason: which reason jumped and when. The error
            messages themselves are in the index (`img2dataset status`, or the status page's
            failures by reason) and in each segment's parquet (`error_message`).

            2. dns, timeout, connection, host_circuit_open: the network or the resolver of
            the fetchers (or many dead hosts in the list); http_4xx / http_429: a site
            refuses or rate-limits us (lower --host_rate_limit); blocked_address: urls that
            resolve to private addresses; publish_failed, worker_died: the fetchers
            themselves (Kafka reachable, memory limits).

            3. Once fixed, `img2dataset enqueue --retry_failed transient` fetches again the
            rows whose failure may not last.""",
            D.FAILURE_RATIO,
        ),
        Alert(
            "Img2datasetHostCircuitOpen",
            f'sum(rate({D.FETCHER_FAILURES}{{reason="host_circuit_open"}}[5m])) > 0',
            "15m",
            "warning",
            "rows have failed on open host circuits for 15 minutes",
            """For 15 minutes, rows have kept failing fast with `host circuit open`: a host
            failed --host_failure_threshold connections or timeouts in a row, and each probe
            after --host_cooldown failed again. Its rows become failed samples.""",
            """1. On Fetch failure ratio by reason: the share of host_circuit_open, and the
            connection or timeout failures that opened the circuits.

            2. Find the host in the failed rows' urls (`img2dataset status`, the status page,
            or the segments' parquet). A host that is gone: nothing to do, its rows fail fast
            as intended. A host we can no longer reach (firewall, DNS, our own network): fix
            that, then `img2dataset enqueue --retry_failed transient` fetches its rows
            again.""",
            D.FAILURE_RATIO,
        ),
        # --- Services -------------------------------------------------------------------------
        Alert(
            "Img2datasetServiceDown",
            f"up{{{COMPONENTS}}} == 0",
            "5m",
            "critical",
            "{{ $labels.component }} {{ $labels.instance }} does not answer on /metrics",
            """Prometheus has not been able to scrape this service for 5 minutes: it is down,
            restarting in a loop, or wedged. Its work (its urls or APPEND partitions) waits
            for the consumer group to give it to another member.""",
            """1. Its state: `docker compose ps` / `kubectl get pods` (restarts, OOMKilled,
            CrashLoopBackOff) and its log.

            2. /healthz fails when its loop stalls (the orchestrator restarts it); /readyz
            lists the checks that fail (dependencies, partitions).

            3. Restart it once the cause is fixed; SIGTERM lets it commit its work in flight.""",
            D.SERVICES_UP,
        ),
        Alert(
            "Img2datasetServiceNotReady",
            f"min by (job, component, instance, check) "
            f"(img2dataset_readiness_check{{{COMPONENTS}}}) == 0",
            "10m",
            "warning",
            "{{ $labels.component }} {{ $labels.instance }} is not ready: "
            "its check {{ $labels.check }} fails",
            """The service answers but one of its readiness checks has failed for 10 minutes
            (the same checks /readyz lists): a dependency it cannot reach (index, bus), no
            partition assigned to it, or a partition it stopped. Kubernetes takes a pod that is
            not ready out of its Service; its work waits.""",
            """1. Which check: the alert's `check` label, or `curl <service>:9100/readyz`.

            2. `index` / `bus`: PostgreSQL or Kafka is unreachable from it (credentials,
            network, the server itself); the service retries by itself once it is back.

            3. `partitions_assigned` / `partitions_owned`: more members than partitions
            (scale down, or add partitions), or a group that cannot rebalance.

            4. `partitions` (appender): a partition stopped on a permanent error; see
            Img2datasetAppendPartitionStopped.""",
            D.SERVICES_UP,
        ),
        Alert(
            "Img2datasetServiceMissing",
            'absent(up{component="appender"}) or absent(up{component="materializer"})',
            "10m",
            "critical",
            "no {{ $labels.component }} is running",
            """Prometheus has no target for this component at all: no appender means no
            segment is written, no materializer means no sidecar or manifest is.""",
            """1. `docker compose ps` / `kubectl get deploy,pods`: was it scaled to 0, or do
            its pods fail to schedule (resources, image pull)?

            2. With the chart: its ServiceMonitor must select the metrics Service (labels
            `release` matching your Prometheus' serviceMonitorSelector).

            3. Start it; it resumes from what the index and the consumer group committed.""",
            D.SERVICES_UP,
        ),
        Alert(
            "Img2datasetStatusServiceMissing",
            'absent(up{component="status"})',
            "10m",
            "warning",
            "the status service is not running: consumer lag is not exported",
            """The status service exports img2dataset_consumer_lag: without it the lag
            panels are empty and the alerts on lag (urls lag growing, partitions unowned,
            materializer backlog) cannot see anything.""",
            """1. `docker compose ps status` / `kubectl get pods -l
            app.kubernetes.io/component=status`, and its log (it needs the index, the store
            and Kafka).

            2. Start it again; it only reads, so restarting it is always safe.""",
            D.SERVICES_UP,
        ),
        # --- Segment commits, store and index errors ------------------------------------------
        Alert(
            "Img2datasetSegmentCommitRetrying",
            event_count(
                D.APPENDER_RETRIES,
                'operation=~"store complete|index commit|announce|kafka_commit"',
                "5m",
                "instance, operation",
            ),
            "10m",
            "warning",
            "{{ $labels.instance }} keeps retrying segment commits ({{ $labels.operation }})",
            """For 10 minutes, a step of committing closed segments has kept failing and being
            retried: completing the upload (store complete), the index transaction (index
            commit), announcing SEGMENT_CLOSED (announce) or committing the Kafka offsets
            (kafka_commit). Rows stay uncommitted until it succeeds; after commit_attempts
            failures the partition stops.""",
            """1. On Appender retries and abandoned segments: which operation.

            2. store complete: S3 (reachable, credentials, bucket policy allowing
            conditional writes); index commit: PostgreSQL; announce and kafka_commit: the
            Kafka brokers (reachable, topic SEGMENT_CLOSED present, ACLs).

            3. The appender's log has each failure with its error. When it recovers, nothing
            needs doing; if a partition stopped, Img2datasetAppendPartitionStopped says
            what to do.""",
            D.APPENDER_ERRORS,
        ),
        Alert(
            "Img2datasetSegmentsAbandoned",
            event_count(D.APPENDER_ABANDONED, "", "15m", "instance, reason"),
            None,
            "warning",
            "{{ $labels.instance }} abandoned segments ({{ $labels.reason }})",
            """An appender threw away a segment it was writing and will read its records again
            from the committed offset (nothing is lost; the work is redone): `fenced` (another
            owner took the partition: a zombie appender), `lost` (its group session expired),
            `stopped` (the partition stopped), `position` (the index lost commits it had
            acknowledged: see Img2datasetIndexLostCommits), or a store error (`store write`,
            `store read`, `store complete`).""",
            """1. On Appender retries and abandoned segments: the reason and how often.

            2. fenced or lost: an appender was paused or cut off longer than the Kafka
            session (CPU starvation, a long GC or swap, a network partition): check its
            node and lower its load, or raise session.timeout.ms.

            3. A store reason: the store itself (S3 errors in the appender's log). The
            orphaned objects are garbage that `img2dataset gc` lists and deletes.""",
            D.APPENDER_ERRORS,
        ),
        Alert(
            "Img2datasetSegmentAnnouncementsStuck",
            f"{D.APPENDER_PENDING} > 0",
            "15m",
            "warning",
            "{{ $labels.instance }} has committed segments not announced for 15 minutes",
            """Segments committed to the index have waited 15 minutes for their SEGMENT_CLOSED
            record to be acknowledged by Kafka. The materializer and your consumers do not
            see them, and the appender's Kafka offsets cannot move past them.""",
            """1. The appender's log: errors producing to the SEGMENT_CLOSED topic.

            2. Check the Kafka brokers, the topic and its ACLs; the producer retries by
            itself.

            3. A restarted appender announces its partitions' recent segments again, so
            restarting it after Kafka recovers is safe.""",
            D.APPENDER_ERRORS,
        ),
        Alert(
            "Img2datasetStoreErrors",
            event_count(
                D.APPENDER_RETRIES,
                'operation=~"store write|store read"',
                "5m",
                "instance, operation",
            ),
            "10m",
            "warning",
            "{{ $labels.instance }} keeps retrying the segment store ({{ $labels.operation }})",
            """For 10 minutes, writing segment data to the store (store write) or reading a
            stored item back (store read) has kept failing and being retried. The partition
            is paused and rewound meanwhile; after commit_attempts failures it stops.""",
            """1. The appender's log has each error (S3 status code and message).

            2. Check the store: endpoint reachable from the appenders, credentials not
            expired, bucket present, quota or disk of MinIO not full, no throttling (503
            SlowDown: fewer appenders or a bigger segment_max_bytes).

            3. It resumes by itself once the store answers again.""",
            D.APPENDER_ERRORS,
        ),
        Alert(
            "Img2datasetIndexErrors",
            event_count(
                D.APPENDER_RETRIES,
                'operation=~"acquire|dedup lookup"',
                "5m",
                "instance, operation",
            ),
            "10m",
            "warning",
            "{{ $labels.instance }} keeps retrying the index ({{ $labels.operation }})",
            """For 10 minutes, reading the PostgreSQL index has kept failing and being
            retried: taking a partition's lease (acquire) or looking up which items are
            stored already (dedup lookup). The partition waits meanwhile.""",
            """1. The appender's log has each error.

            2. Check PostgreSQL: reachable from the appenders, max_connections not
            exhausted, not in recovery or read-only, disk not full, the password Secret
            valid.

            3. It resumes by itself once the index answers again.""",
            D.APPENDER_ERRORS,
        ),
        Alert(
            "Img2datasetSegmentEventsSkipped",
            event_count(D.CONSUMER_EVENTS, 'outcome!="handled"', "15m", "group, outcome"),
            None,
            "warning",
            "{{ $labels.group }} skipped SEGMENT_CLOSED events ({{ $labels.outcome }})",
            """A segment consumer skipped SEGMENT_CLOSED events: malformed ones (not written
            by an appender), or segments its index does not hold (unknown_segment: the
            consumer reads another index than the appenders write, or the event was produced
            by hand).""",
            """1. On SEGMENT_CLOSED events by outcome: which consumer group and how many.

            2. unknown_segment: compare I2D_INDEX_URL of that consumer and of the appenders;
            they must name the same database.

            3. malformed: find who else produces to the SEGMENT_CLOSED topic. Then
            `img2dataset materialize` brings every committed segment's sidecars up to
            date.""",
            D.SEGMENT_EVENTS,
        ),
    ]


def groups() -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": GROUP,
                "rules": [*recording_rules(), *(a.rule() for a in alerts())],
            }
        ]
    }


# --- time scaling -------------------------------------------------------------------------

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w))+$")
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d|w)[\dmshdw]*)(?::(\d+(?:ms|s|m|h|d|w)[\dmshdw]*)?)?\]")
_OFFSET = re.compile(r"\boffset\s+(\d+(?:ms|s|m|h|d|w)[\dmshdw]*)")


def scale_duration(text: str, factor: float) -> str:
    """A Prometheus duration divided by `factor`, written in the largest exact unit."""
    if not _DURATION.match(text):
        raise ValueError(f"not a duration: {text!r}")
    ms = sum(int(n) * _UNITS_MS[u] for n, u in _PART.findall(text)) / factor
    if ms < 1 or ms != int(ms):
        raise ValueError(f"{text} / {factor} is not a whole number of milliseconds")
    for unit in ("w", "d", "h", "m", "s"):
        if int(ms) % _UNITS_MS[unit] == 0:
            return f"{int(ms) // _UNITS_MS[unit]}{unit}"
    return f"{int(ms)}ms"


def scale_expr(expr: str, factor: float) -> str:
    """`expr` with every range, subquery step and offset divided by `factor` (never inside a
    string literal)."""

    def ranges(m: re.Match[str]) -> str:
        step = m.group(2)
        if m.group(0).count(":"):
            tail = f":{scale_duration(step, factor)}" if step else ":"
        else:
            tail = ""
        return f"[{scale_duration(m.group(1), factor)}{tail}]"

    def outside_strings(text: str) -> str:
        text = _RANGE.sub(ranges, text)
        return _OFFSET.sub(lambda m: f"offset {scale_duration(m.group(1), factor)}", text)

    out, last = [], 0
    for s in _STRING.finditer(expr):
        out += [outside_strings(expr[last : s.start()]), s.group()]
        last = s.end()
    out.append(outside_strings(expr[last:]))
    return "".join(out)


def scaled(doc: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy of the rules whose `for:` and PromQL durations run `factor` times faster."""
    out: dict[str, Any] = {"groups": []}
    for group in doc["groups"]:
        rules = []
        for rule in group["rules"]:
            rule = dict(rule, expr=scale_expr(rule["expr"], factor))
            if "for" in rule:
                rule["for"] = scale_duration(rule["for"], factor)
            rules.append(rule)
        out["groups"].append(dict(group, rules=rules))
    return out


# --- rendering ----------------------------------------------------------------------------

HEADER = """\
# img2dataset alerts and the recording rules they use. GENERATED by
# deploy/prometheus/build_rules.py: edit that script, then run it (make test checks both copies).
#
# Loaded by docker-compose's Prometheus (deploy/prometheus/prometheus.yml) and shipped by the
# Helm chart as a PrometheusRule (metrics.prometheusRule.enabled). Unit tests of every alert:
# tests/deploy/prometheus/ (promtool test rules).
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(doc: dict[str, Any] | None = None) -> str:
    body = yaml.dump(
        groups() if doc is None else doc,
        Dumper=_Dumper,
        sort_keys=False,
        width=100,
        allow_unicode=True,
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is out of date")
    parser.add_argument("--time-scale", type=float, help="divide every duration by this")
    parser.add_argument("--output", type=Path, help="write here (with --time-scale)")
    ns = parser.parse_args(argv)
    if ns.time_scale is not None:
        if ns.output is None:
            parser.error("--time-scale needs --output")
        ns.output.write_text(render(scaled(groups(), ns.time_scale)))
        return 0
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
