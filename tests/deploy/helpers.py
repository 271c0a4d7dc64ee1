"""What the deploy checks share: the files, the services' settings models, the metrics the
services export, the metric names a PromQL query reads, and the Helm chart rendered by Helm's
own engine (helm-python-sdk binds Helm's Go SDK; no cluster, no helm binary)."""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from i2d_cli.enqueue import EnqueueSettings
from i2d_cli.serve import SETTINGS
from i2d_segments.settings import ENV_PREFIX, ServiceSettings
from i2d_status.schema import Failure, Lag, Progress, Rates, SegmentCounts, StatusResponse

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "deploy/helm/img2dataset"
DASHBOARD = ROOT / "deploy/grafana/dashboards/img2dataset.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"

# Variables the services read through their client libraries rather than their settings
# models: boto3's credential chain and libpq's password.
CLIENT_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD"})

# Import roots whose modules register Prometheus metrics when imported.
SERVICE_PACKAGES = (
    "i2d_segments",
    "i2d_fetcher",
    "i2d_appender",
    "i2d_materializer",
    "i2d_status",
    "i2d_cli",
)


def settings_model(command: str) -> type[ServiceSettings]:
    """The settings model behind `img2dataset serve <command>` (or `enqueue`)."""
    if command == "enqueue":
        return EnqueueSettings
    if command not in SETTINGS:
        pytest.fail(
            f"{command!r} is not a service of `img2dataset serve` (known: {sorted(SETTINGS)})"
        )
    return SETTINGS[command]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field}".upper()


def check_service_env(
    model: type[ServiceSettings],
    names: set[str],
    literals: Mapping[str, str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """Every variable is read by the service (a field of its settings model, or one of the
    client libraries' own), and the literal values parse: the model builds from them."""
    fields = {env_name(f) for f in model.model_fields}
    unknown = sorted(n for n in names if n not in fields and n not in CLIENT_ENV)
    assert not unknown, f"{where}: {unknown} are read by nothing ({model.__name__} fields)"
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in literals.items():
        monkeypatch.setenv(name, value)
    for field, info in model.model_fields.items():
        if info.is_required() and env_name(field) not in literals:
            monkeypatch.setenv(env_name(field), "x")
    try:
        model()
    except ValueError as e:  # pydantic's ValidationError
        pytest.fail(f"{where}: the environment does not parse into {model.__name__}: {e}")


# --- metrics -----------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def _import_all(package: str) -> None:
    try:
        root = importlib.import_module(package)
    except ModuleNotFoundError:
        return  # a service not built yet exports nothing
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def _series_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def _status_snapshot() -> StatusResponse:
    """A status refresh with every figure present, so the status registry yields every family
    it can (some only appear once there is lag to report or a segment closed)."""
    return StatusResponse(
        version="0",
        mode="distributed",
        generated_at=1.0,
        refresh_seconds=2.0,
        progress=Progress(
            samples=2,
            committed=1,
            in_open_segments=1,
            successes=1,
            failures=1,
            success_rate=0.5,
            by_status={"success": 1},
            enqueued=2,
            fetched=2,
            total=2,
            done=2,
            fraction=1.0,
            run=None,
        ),
        rates=Rates(
            window_seconds=10,
            images_per_second=0,
            samples_per_second=0,
            failures_per_second=0,
            source="observed",
        ),
        failures=[Failure(reason="404", count=1)],
        segments=SegmentCounts(closed=1, open=1, items=1, bytes=10, last_closed_at=1.0),
        lag=[Lag(group="fetcher", topic="urls", partition=0, committed=1, end=2, lag=1)],
        recent=[],
        errors=[],
    )


@functools.cache
def exported_metric_names() -> frozenset[str]:
    """Every series name the services can expose on /metrics: import every module of every
    service package (metrics register at import), then read prometheus-client's default
    registry (the workers' /metrics, with the process collector's process_* series) and the
    status service's own registry over a full snapshot (consumer lag, index figures)."""
    for package in SERVICE_PACKAGES:
        _import_all(package)
    from prometheus_client import CollectorRegistry

    from i2d_segments.runtime import Health, ReadinessCollector
    from i2d_status.metrics import status_registry

    snapshot = _status_snapshot()
    # What every health server adds at scrape time (HealthServer, the status app).
    health = Health()
    health.add_check("index", lambda: True)
    readiness = CollectorRegistry(auto_describe=False)
    readiness.register(ReadinessCollector(health))
    return frozenset(
        _series_names(REGISTRY)
        | _series_names(status_registry(lambda: snapshot))
        | _series_names(readiness)
    )


_LABEL_GROUPS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "group_left", "group_right"}
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in `{...}` or `by (...)`), strings, ranges or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_GROUPS.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


# --- Helm ----------------------------------------------------------------------------------


def load_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CHART / "ci" / name).read_text())
    assert isinstance(data, dict)
    return data


def render(values: dict[str, Any] | None = None, name: str = "demo") -> list[dict[str, Any]]:
    """The chart's manifests for `values`, as Helm renders them for `helm install`."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=name, namespace="data", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
