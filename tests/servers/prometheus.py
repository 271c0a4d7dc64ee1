"""A real Prometheus for the tests (Debian's `prometheus` package: `make servers` installs it),
on a free loopback port with its own configuration and storage in a temporary folder, stopped by
its PID. Nothing of the package's own service is used. Also `promtool`, from the same package.

    with start_prometheus(tmp_path, {"fetcher": ["127.0.0.1:9100"]}, rule_files=[rules]) as prom:
        prom.wait_for_targets(1)
        prom.query("up")                 # instant query: [{"metric": {...}, "value": [t, "1"]}]
        prom.query_range("up", start, end, step=1)
        prom.alerts()                    # active alerts, pending and firing
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers.proc import ServerProcess, free_port, running, wait_until


def binary(name: str) -> str:
    """`prometheus` or `promtool` from PATH or Debian's /usr/bin; fails the test when absent."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.fail(f"{name} not found: `make servers` installs Debian's prometheus package")
    return found


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True)
class Prometheus:
    url: str
    port: int
    server: ServerProcess
    config_path: Path

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>: its `data`, or PrometheusError with Prometheus' own message."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: {labels, annotations, state: pending|firing, activeAt, value}."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["state"] == "firing"]

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group, with its health and last error."""
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def wait_for_targets(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` targets answered their latest scrape."""

        def up() -> bool:
            return sum(t["health"] == "up" for t in self.targets()) >= count

        try:
            wait_until(up, timeout, f"{count} targets up", 0.2)
        except TimeoutError as e:
            states = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
            raise TimeoutError(f"{e}: {states}") from e


def config(
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
) -> dict[str, Any]:
    """A scrape job per component (its name also the `component` label the dashboard and the
    alerts select by, as the compose configuration and the chart's ServiceMonitor attach)."""
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": component,
                "static_configs": [{"targets": list(addresses)}],
                "relabel_configs": [{"target_label": "component", "replacement": component}],
            }
            for component, addresses in targets.items()
        ],
    }


@contextlib.contextmanager
def start_prometheus(
    tmp_path: Path,
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
    timeout: float = 30.0,
) -> Iterator[Prometheus]:
    """Run Prometheus on 127.0.0.1 until the block exits; it scrapes `targets` ({component:
    ["host:port", ...]}) and evaluates `rule_files` every `interval`."""
    root = tmp_path / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config(targets, rule_files, interval)))
    port = free_port()
    argv = [
        binary("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    server = ServerProcess(argv, root / "prometheus.log", cwd=root)
    with running(server, port, timeout=timeout):
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(ready, timeout, "prometheus ready", 0.1)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\nprometheus log:\n{server.log_tail()}") from e
        yield Prometheus(url, port, server, config_path)


def wait_for_alerts(
    prom: Prometheus, wanted: Mapping[str, Mapping[str, str]], timeout: float
) -> list[dict[str, Any]]:
    """Until every alert named in `wanted` fires with (at least) the labels given; the firing
    alerts then. On a timeout, says which are missing and what is pending or firing."""
    deadline = time.monotonic() + timeout
    firing: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        firing = prom.firing()
        missing = [
            name
            for name, labels in wanted.items()
            if not any(
                a["labels"]["alertname"] == name and labels.items() <= a["labels"].items()
                for a in firing
            )
        ]
        if not missing:
            return firing
        time.sleep(0.5)
    states = sorted((a["labels"]["alertname"], a["state"]) for a in prom.alerts())
    raise TimeoutError(f"alerts not firing after {timeout}s: {missing}; active: {states}")
