"""docker-compose.yml without a Docker engine: valid against the Compose specification's JSON
schema, images pinned, healthchecks and health-gated startup, every variable a service reads
is one of its settings, topics and bucket match what the services use, fetchers scale, and
Prometheus and Grafana are wired to every service and to the dashboard."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from i2d_segments.settings import ConnectionSettings
from tests.deploy.helpers import (
    CLIENT_ENV,
    COMPOSE,
    DASHBOARD,
    PROMETHEUS,
    ROOT,
    check_service_env,
    settings_model,
)

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
# The image's ENTRYPOINT (the Dockerfile test checks it): `command` names the service.
IMAGE_ENTRYPOINT = ["img2dataset", "serve"]
MiB = 1024 * 1024


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def img2dataset_command(service: dict[str, Any]) -> list[str] | None:
    """`img2dataset ...` argv of a service running the project's image, else None."""
    if "entrypoint" in service:
        entrypoint = service["entrypoint"]
        argv = entrypoint if isinstance(entrypoint, list) else shlex.split(entrypoint)
    elif service.get("build") is not None:
        argv = IMAGE_ENTRYPOINT + list(service.get("command", ["fetcher"]))
    else:
        return None
    return argv if argv[:1] == ["img2dataset"] else None


def served(name: str) -> str | None:
    """The `img2dataset serve <service>` a compose service runs, if any."""
    argv = img2dataset_command(services()[name])
    return argv[2] if argv and argv[1] == "serve" else None


def one_shot(service: dict[str, Any]) -> bool:
    """A job that runs to completion (topic and bucket creation, the enqueue tool): it says
    so with `restart: "no"`; every other service restarts and has a healthcheck."""
    return service.get("restart") == "no"


def run_check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_valid_against_the_compose_specification() -> None:
    run = run_check_jsonschema(COMPOSE)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["fetcher"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["services"]["kafka"]["healthcheck"]["retries"] = "many"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    run = run_check_jsonschema(path)
    assert run.returncode != 0
    assert "service_ready" in run.stdout + run.stderr


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name} names its image (built ones too, so they are tagged)"
        repo, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag not in ("latest", "stable", "main", "edge"), f"{name}: {image} floats"


def test_the_project_image_is_tagged_with_the_project_version() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    built = {s["image"] for s in services().values() if s.get("build") is not None}
    assert built == {f"img2dataset-segments:{version}"}


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        assert service.get("restart") in ("no", "always", "unless-stopped"), name
        if one_shot(service):
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check["test"][0] != "NONE", name


def test_startup_waits_for_health_or_completion() -> None:
    all_services = services()
    for name, service in all_services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            target = all_services[dep]
            condition = spec["condition"]
            if one_shot(target):
                assert condition == "service_completed_successfully", (name, dep)
            else:
                assert condition == "service_healthy", (name, dep)
                assert target.get("healthcheck"), (name, dep)
    # The services start once topics, bucket and index are there.
    for name in all_services:
        if served(name):
            deps = all_services[name]["depends_on"]
            assert {"init-topics", "init-bucket", "postgres"} <= set(deps), name


def test_one_shot_jobs_are_waited_for_as_completed() -> None:
    for name, service in services().items():
        if one_shot(service) and "tools" not in service.get("profiles", []):
            waiting = [s for s in services().values() if name in s.get("depends_on", {})]
            assert waiting, f"{name} is a one-shot job nothing waits for"


def test_every_service_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    for name, service in services().items():
        argv = img2dataset_command(service)
        if argv is None:
            assert not [k for k in environment(service) if k.startswith("I2D_")], name
            continue
        command = argv[2] if argv[1] == "serve" else argv[1]
        env = environment(service)
        check_service_env(
            settings_model(command), set(env), env, monkeypatch, f"docker-compose {name}"
        )
        checked.append(command)
    assert {"fetcher", "appender", "materializer", "status"} <= set(checked)


def test_secrets_never_sit_in_a_dsn() -> None:
    for name, service in services().items():
        url = environment(service).get("I2D_INDEX_URL")
        if url:
            assert urlsplit(url).password is None, name
            assert "PGPASSWORD" in environment(service), name
    assert "PGPASSWORD" in CLIENT_ENV


def test_fetchers_scale() -> None:
    fetcher = services()["fetcher"]
    assert "container_name" not in fetcher
    assert not fetcher.get("ports"), "a fixed host port would clash at --scale fetcher=2"
    assert "deploy" not in fetcher or "replicas" not in fetcher["deploy"]


def kafka_env() -> dict[str, str]:
    return environment(services()["kafka"])


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_kafka_is_a_single_kraft_node_with_host_and_network_listeners() -> None:
    env = kafka_env()
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"] and "KAFKA_ZOOKEEPER_CONNECT" not in env
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    assert set(advertised) <= set(bound)
    hosts = {host for host, _ in advertised.values()}
    assert "kafka" in hosts and "localhost" in hosts
    # The services reach the in-network listener...
    in_network = next(f"{h}:{p}" for h, p in advertised.values() if h == "kafka")
    for name in services():
        if served(name):
            bootstrap = environment(services()[name])["I2D_KAFKA_BOOTSTRAP_SERVERS"]
            assert bootstrap == in_network, name
    # ...and the host's shell the published one, on the same port.
    host_port = next(p for h, p in advertised.values() if h == "localhost")
    published = [str(p).rsplit(":", 2) for p in services()["kafka"]["ports"]]
    assert [str(host_port), str(host_port)] in [p[-2:] for p in published]


def created_topics() -> dict[str, int]:
    script = "\n".join(services()["init-topics"]["command"])
    match = re.search(r"for spec in ([^;]+);", script)
    assert match, "init-topics loops over name:partitions specs"
    return {name: int(n) for name, n in (s.split(":") for s in match.group(1).split())}


def test_init_job_creates_the_topics_the_services_use() -> None:
    defaults = ConnectionSettings()
    topics = created_topics()
    assert set(topics) == {defaults.urls_topic, defaults.append_topic, defaults.closed_topic}
    # As many fetchers as `urls` partitions, as many appenders as APPEND's.
    assert topics[defaults.urls_topic] >= 8
    assert 2 <= topics[defaults.append_topic] <= topics[defaults.urls_topic]
    assert topics[defaults.closed_topic] >= 1
    script = "\n".join(services()["init-topics"]["command"])
    assert "--if-not-exists" in script, "re-running compose up must not fail"
    for name in services():
        if served(name):
            assert environment(services()[name])["I2D_CREATE_TOPICS"] == "false", name


def test_messages_large_enough_for_image_records() -> None:
    """An APPEND record carries an image inline up to the services' kafka_max_message_bytes;
    the broker and the topics must accept it with room for the record's overhead."""
    limit = ConnectionSettings().kafka_max_message_bytes
    for name in services():
        if served(name):
            value = environment(services()[name]).get("I2D_KAFKA_MAX_MESSAGE_BYTES")
            limit = max(limit, int(value)) if value else limit
    assert limit >= 16 * MiB
    env = kafka_env()
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= limit + MiB // 2
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= int(env["KAFKA_MESSAGE_MAX_BYTES"])
    script = "\n".join(services()["init-topics"]["command"])
    topic_max = re.search(r"max\.message\.bytes=(\d+)", script)
    assert topic_max and int(topic_max.group(1)) >= limit + MiB // 2


def test_init_job_creates_the_bucket_the_store_uses() -> None:
    job = services()["init-bucket"]
    argv = job["entrypoint"]
    assert argv[:2] == ["mc", "mb"] and "--ignore-existing" in argv
    bucket = argv[-1].split("/", 1)[1]
    minio = services()["minio"]
    assert job["image"] == minio["image"]
    for name in services():
        if served(name):
            env = environment(services()[name])
            store = urlsplit(env["I2D_STORE_URL"])
            assert (store.scheme, store.netloc) == ("s3", bucket), name
            assert urlsplit(env["I2D_S3_ENDPOINT_URL"]).hostname == "minio", name
            assert env["AWS_ACCESS_KEY_ID"] == environment(minio)["MINIO_ROOT_USER"]


def test_index_points_at_the_postgres_service() -> None:
    pg = environment(services()["postgres"])
    for name in services():
        if served(name):
            env = environment(services()[name])
            dsn = urlsplit(env["I2D_INDEX_URL"])
            assert dsn.hostname == "postgres" and dsn.username == pg["POSTGRES_USER"], name
            assert dsn.path.lstrip("/") == pg["POSTGRES_DB"], name
            assert env["PGPASSWORD"] == pg["POSTGRES_PASSWORD"], name


def metrics_port(name: str) -> int:
    env = environment(services()[name])
    model = settings_model(served(name) or "")
    if served(name) == "status":
        return int(env.get("I2D_HTTP_PORT", model.model_fields["http_port"].default))
    return int(env.get("I2D_METRICS_PORT", model.model_fields["metrics_port"].default))


def test_healthchecks_probe_each_service_on_its_own_port() -> None:
    for name in services():
        if not served(name):
            continue
        argv = services()[name]["healthcheck"]["test"][1:]
        assert argv[0] == "i2d-healthcheck", name
        if "--port" in argv:
            assert int(argv[argv.index("--port") + 1]) == metrics_port(name), name
        else:
            assert metrics_port(name) == int(
                environment(services()[name]).get("I2D_METRICS_PORT", 9100)
            ), name


def test_prometheus_scrapes_every_service_with_its_component_label() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in services():
        if not served(name):
            continue
        job = jobs.get(name)
        assert job, f"Prometheus does not scrape {name}"
        (sd,) = job["dns_sd_configs"]
        # DNS service discovery: every replica of `--scale fetcher=N`.
        assert sd["names"] == [name] and sd["type"] == "A", name
        assert sd["port"] == metrics_port(name), name
        labels = {r["target_label"]: r["replacement"] for r in job.get("relabel_configs", [])}
        assert labels.get("component") == served(name), f"{name}: the dashboard's label"
    prometheus = services()["prometheus"]
    mounts = [v.split(":") for v in prometheus["volumes"]]
    assert ["./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    mounts = {src: dst for src, dst, *_ in (v.split(":") for v in grafana["volumes"])}
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards/img2dataset.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts[f"./{DASHBOARD.parent.relative_to(ROOT)}"] == dashboards_dir
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
