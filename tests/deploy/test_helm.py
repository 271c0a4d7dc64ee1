"""The Helm chart, rendered and linted by Helm's own engine (helm-python-sdk: Helm's Go SDK in
a shared library shipped in the wheel; no helm binary, no cluster), for the default values and
for ci/all-on-values.yaml; every manifest validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest Kubernetes the chart
supports and a recent one. kubernetes-validate has no schemas for CRDs, so the KEDA
ScaledObject and the prometheus-operator ServiceMonitor and PrometheusRule are checked
structurally here (the PrometheusRule's rules by promtool in test_alerts.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from i2d_appender.settings import AppenderSettings
from i2d_cli.serve import SETTINGS
from tests.deploy.helpers import (
    CHART,
    DASHBOARD,
    by_kind,
    check_service_env,
    deep_merge,
    load_values,
    render,
)

# The chart's kubeVersion floor, and a recent release kubernetes-validate ships offline.
KUBE_VERSIONS = ("1.25.0", "1.33.0")
CRDS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
COMPONENTS = ("fetcher", "appender", "materializer", "status")
ALL_ON = "all-on-values.yaml"
VALUE_SETS = {"defaults": None, "all-on": ALL_ON}


def values_for(which: str) -> dict[str, Any] | None:
    file = VALUE_SETS[which]
    return None if file is None else load_values(file)


def effective_values(which: str) -> dict[str, Any]:
    """values.yaml with the value set's overrides, as the templates see them."""
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values_for(which))


def rendered(which: str) -> list[dict[str, Any]]:
    return render(values_for(which))


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (dep,) = [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return dep


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def fails_to_render(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


# --- Helm's own checks ---------------------------------------------------------------------


@pytest.mark.parametrize("which", VALUE_SETS)
def test_helm_lint_is_clean(which: str) -> None:
    report = helm.lint(CHART, values_for(which), strict=True, namespace="data")
    assert report["errors"] == [], report
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert findings == [], findings


def test_helm_lint_reports_a_broken_template(tmp_path: Path) -> None:
    chart = tmp_path / "img2dataset"
    shutil.copytree(CHART, chart)
    (chart / "templates/broken.yaml").write_text("kind: {{ .Values.nope.deeper }\n")
    report = helm.lint(chart, None, strict=True, namespace="data")
    assert report["errors"] or [m for m in report["messages"] if m["severity"] >= 2]


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["type"] == "application"
    assert meta["name"] == "img2dataset" and meta["version"] and meta["appVersion"]
    assert meta["kubeVersion"].startswith(f">={KUBE_VERSIONS[0]}")
    assert (CHART / "templates/_helpers.tpl").exists()
    helpers = (CHART / "templates/_helpers.tpl").read_text()
    for name in ("name", "fullname", "labels", "selectorLabels"):
        assert f'define "img2dataset.{name}"' in helpers


# --- Kubernetes schemas --------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("which", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(which: str, version: str) -> None:
    docs = rendered(which)
    assert docs
    for doc in docs:
        if doc["kind"] in CRDS:
            assert doc["apiVersion"] == CRDS[doc["kind"]]
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {e.message}")


def test_the_schema_validation_catches_a_bad_manifest() -> None:
    dep = deployment(rendered("defaults"), "fetcher")
    container(dep)["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSIONS[-1], strict=True)


def test_all_on_values_turn_every_option_on() -> None:
    def switches(node: Any, path: str = "") -> list[tuple[str, Any]]:
        if not isinstance(node, dict):
            return []
        out = [(f"{path}.{k}", v) for k, v in node.items() if k == "enabled"]
        for k, v in node.items():
            out += switches(v, f"{path}.{k}")
        return out

    values = load_values(ALL_ON)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert {p for p, _ in switches(values)} == {p for p, _ in switches(defaults)}
    assert all(v is True for _, v in switches(values)), switches(values)
    for section in ("kafka", "s3", "postgres"):
        assert values[section]["existingSecret"], section


# --- values --------------------------------------------------------------------------------

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def test_values_schema_declares_camel_case_keys_and_rejects_bad_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def names(node: dict[str, Any]) -> list[str]:
        out = []
        for key, sub in node.get("properties", {}).items():
            out.append(key)
            out += names(sub)
        return out

    bad = [n for n in names(schema) if not CAMEL.match(n)]
    assert not bad, f"not camelCase: {bad}"
    for values, where in (
        ({"fetcher": {"replicaCount": "two"}}, "/fetcher/replicaCount"),
        ({"fetchers": {}}, "fetchers"),
        ({"postgres": {"sslMode": "sometimes"}}, "/postgres/sslMode"),
    ):
        with pytest.raises(helm.HelmValuesError, match=where):
            render(values)


def test_every_values_key_is_documented() -> None:
    """helm-docs style: a `# --` comment above each key, or above the map it sits in."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_at: list[int] = []  # indentation of the documented maps we are inside
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.\-/]+):", line)
        if not match:
            continue
        indent = len(match.group(1))
        documented_at = [d for d in documented_at if d < indent]
        above = [x.strip() for x in lines[max(0, i - 8) : i]]
        comment: list[str] = []
        for text in reversed(above):
            if not text.startswith("#"):
                break
            comment.insert(0, text)
        has_doc = any(c.startswith("# --") for c in comment)
        is_map = line.rstrip().endswith(":")
        if has_doc:
            documented_at.append(indent)
        elif not is_map and not documented_at:
            undocumented.append(line.strip())
    assert not undocumented, f"undocumented keys in values.yaml: {undocumented}"


# --- resources -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", VALUE_SETS)
def test_standard_labels_with_a_component(which: str) -> None:
    docs = rendered(which)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("img2dataset-")
    for component in COMPONENTS:
        dep = deployment(docs, component)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        assert selector.items() <= pod_labels.items()


@pytest.mark.parametrize("which", VALUE_SETS)
def test_one_deployment_per_service_with_probes_resources_and_grace(which: str) -> None:
    docs = rendered(which)
    assert len(by_kind(docs, "Deployment")) == len(COMPONENTS)
    values = effective_values(which)
    for component in COMPONENTS:
        dep = deployment(docs, component)
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        assert c["args"] == [component], "the image's entrypoint is `img2dataset serve`"
        assert component in SETTINGS
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ports, (component, probe)
        expected_port = values[component]["port"] if component == "status" else None
        expected_port = expected_port or values["metrics"]["port"]
        assert list(ports.values()) == [expected_port], component
        grace = pod["terminationGracePeriodSeconds"]
        assert grace == values[component]["terminationGracePeriodSeconds"] and grace >= 30
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def env_of(docs: list[dict[str, Any]], component: str) -> tuple[set[str], dict[str, str]]:
    """Every variable a component's container gets (the shared ConfigMap and its own env),
    and the literal values among them."""
    c = container(deployment(docs, component))
    configmaps = {d["metadata"]["name"]: d["data"] for d in by_kind(docs, "ConfigMap")}
    literals: dict[str, str] = {}
    names: set[str] = set()
    for source in c.get("envFrom", []):
        data = configmaps[source["configMapRef"]["name"]]
        literals.update(data)
        names.update(data)
    for var in c["env"]:
        names.add(var["name"])
        if "value" in var:
            literals[var["name"]] = var["value"]
        else:
            literals.pop(var["name"], None)
    return names, literals


@pytest.mark.parametrize("which", VALUE_SETS)
def test_every_variable_is_a_setting_of_its_service(
    which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(which)
    for component in COMPONENTS:
        names, literals = env_of(docs, component)
        check_service_env(SETTINGS[component], names, literals, monkeypatch, f"{which} {component}")


def test_external_kafka_s3_and_postgres_settings_reach_the_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The values land in the appender's settings as the service parses its environment."""
    values = load_values(ALL_ON)
    _, literals = env_of(rendered("all-on"), "appender")
    for name in list(os.environ):
        if name.upper().startswith("I2D_"):
            monkeypatch.delenv(name)
    for name, value in literals.items():
        monkeypatch.setenv(name, value)
    assert SETTINGS["appender"] is AppenderSettings
    settings = AppenderSettings()
    kafka, s3, pg, topics = (
        values["kafka"],
        values["s3"],
        values["postgres"],
        values["kafka"]["topics"],
    )
    assert settings.kafka_bootstrap_servers == kafka["bootstrapServers"]
    assert settings.kafka_max_message_bytes == kafka["maxMessageBytes"]
    assert settings.create_topics is kafka["createTopics"]
    assert (settings.urls_topic, settings.append_topic, settings.closed_topic) == (
        topics["urls"]["name"],
        topics["append"]["name"],
        topics["segmentClosed"]["name"],
    )
    assert settings.append_partitions == topics["append"]["partitions"]
    assert (settings.store_url, settings.s3_endpoint_url, settings.s3_region) == (
        s3["storeUrl"],
        s3["endpointUrl"],
        s3["region"],
    )
    assert settings.index_url == (
        f"postgresql://{pg['user']}@{pg['host']}:{pg['port']}/{pg['database']}"
        f"?sslmode={pg['sslMode']}"
    )
    assert settings.metrics_port == values["metrics"]["port"]
    assert settings.group_id == values["appender"]["groupId"]


def test_credentials_come_from_existing_secrets_only() -> None:
    values = load_values(ALL_ON)
    docs = rendered("all-on")
    assert not by_kind(docs, "Secret"), "the chart never holds a credential"
    expected = {
        "AWS_ACCESS_KEY_ID": (values["s3"]["existingSecret"], values["s3"]["accessKeyIdKey"]),
        "AWS_SECRET_ACCESS_KEY": (
            values["s3"]["existingSecret"],
            values["s3"]["secretAccessKeyKey"],
        ),
        "PGPASSWORD": (values["postgres"]["existingSecret"], values["postgres"]["passwordKey"]),
        "I2D_KAFKA_CONFIG": (values["kafka"]["existingSecret"], values["kafka"]["configKey"]),
    }
    for component in COMPONENTS:
        env = {v["name"]: v for v in container(deployment(docs, component))["env"]}
        for name, (secret, key) in expected.items():
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret, key), (component, name)
    for cm in by_kind(docs, "ConfigMap"):
        text = json.dumps(cm["data"])
        assert "PGPASSWORD" not in text and "AWS_SECRET" not in text
    # Without existing Secrets, nothing refers to one (IRSA / the SDK's chain applies).
    for component in COMPONENTS:
        env = container(deployment(rendered("defaults"), component))["env"]
        assert not [v for v in env if "secretKeyRef" in v.get("valueFrom", {})]


@pytest.mark.parametrize("which", VALUE_SETS)
def test_pod_disruption_budgets_select_their_deployment(which: str) -> None:
    docs = rendered(which)
    values = effective_values(which)
    pdbs = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in by_kind(docs, "PodDisruptionBudget")
    }
    wanted = {c for c in COMPONENTS if values[c]["podDisruptionBudget"]["enabled"]}
    assert set(pdbs) == wanted
    for component, pdb in pdbs.items():
        dep = deployment(docs, component)
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        assert (
            pdb["spec"]["maxUnavailable"]
            == values[component]["podDisruptionBudget"]["maxUnavailable"]
        )


def test_metrics_service_and_service_monitor_reach_every_service() -> None:
    docs = rendered("all-on")
    services = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    spec = monitor["spec"]
    selected = [
        s
        for s in services
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    scraped_ports = {e["port"] for e in spec["endpoints"]}
    # Every component's pods sit behind a selected Service on a port the monitor scrapes.
    for component in COMPONENTS:
        pod_labels = deployment(docs, component)["spec"]["template"]["metadata"]["labels"]
        reached = [
            p["name"]
            for s in selected
            if s["spec"]["selector"].items() <= pod_labels.items()
            for p in s["spec"]["ports"]
        ]
        assert set(reached) & scraped_ports, f"{component} is not scraped"
    (metrics,) = [s for s in services if s["metadata"]["name"].endswith("-metrics")]
    assert metrics["spec"]["clusterIP"] == "None", "each pod is scraped, not a balanced VIP"
    # Structure the CRD schema would check: names, durations, string label values.
    assert spec["namespaceSelector"]["matchNames"] == ["data"]
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["scrapeTimeout"])
        (relabel,) = endpoint["relabelings"]
        assert relabel == {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "targetLabel": "component",
            "action": "replace",
        }, "the dashboard's `component` label"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not by_kind(rendered("defaults"), "ServiceMonitor"), "optional, off by default"


def test_prometheus_rule_for_the_operator() -> None:
    """Structure the CRD schema would check: groups of named rules, each an alert or a record
    with a PromQL string, durations, string labels and annotations."""
    values = load_values(ALL_ON)
    (rule,) = by_kind(rendered("all-on"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    (group,) = rule["spec"]["groups"]
    assert set(group) == {"name", "rules"} and group["name"]
    assert group["rules"]
    for r in group["rules"]:
        assert ("alert" in r) != ("record" in r), r
        allowed = (
            {"alert", "expr", "for", "labels", "annotations"}
            if "alert" in r
            else {"record", "expr"}
        )
        assert set(r) <= allowed, r
        assert isinstance(r["expr"], str) and r["expr"].strip()
        if "for" in r:
            assert re.fullmatch(r"\d+(ms|s|m|h|d|w)", r["for"]), r["for"]
        for key in ("labels", "annotations"):
            assert all(isinstance(v, str) for v in r.get(key, {}).values()), (r.get("alert"), key)
        if "alert" in r:
            assert r["labels"]["team"] == values["metrics"]["prometheusRule"]["ruleLabels"]["team"]
            assert r["annotations"]["dashboard"].startswith("https://grafana.example.com/d/")
    assert not by_kind(rendered("defaults"), "PrometheusRule"), "optional, off by default"


# --- autoscaling ---------------------------------------------------------------------------

KEDA_OFF = {"fetcher": {"autoscaling": {"keda": {"enabled": False}, "minReplicas": 1}}}


def test_keda_on_means_a_scaled_object_and_no_hpa() -> None:
    docs = rendered("all-on")
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    (scaled,) = by_kind(docs, "ScaledObject")
    values = load_values(ALL_ON)
    fetcher = deployment(docs, "fetcher")
    assert "replicas" not in fetcher["spec"], "the autoscaler owns the fetchers' replicas"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": fetcher["metadata"]["name"],
    }
    assert spec["minReplicaCount"] == values["fetcher"]["autoscaling"]["minReplicas"]
    assert spec["maxReplicaCount"] == values["fetcher"]["autoscaling"]["maxReplicas"]
    assert spec["maxReplicaCount"] <= values["kafka"]["topics"]["urls"]["partitions"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata is strings"
    env = {v["name"]: v.get("value") for v in container(fetcher)["env"]}
    _, literals = env_of(docs, "fetcher")
    assert meta["topic"] == literals["I2D_URLS_TOPIC"] == "laion-urls"
    assert meta["consumerGroup"] == env["I2D_GROUP_ID"]
    assert meta["bootstrapServers"] == literals["I2D_KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) == values["fetcher"]["autoscaling"]["keda"]["lagThreshold"]
    assert trigger["authenticationRef"] == {"name": "img2dataset-kafka-auth"}


def test_without_keda_an_hpa_and_no_scaled_object() -> None:
    docs = render(deep_merge(load_values(ALL_ON), KEDA_OFF))
    assert not by_kind(docs, "ScaledObject")
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    fetcher = deployment(docs, "fetcher")
    assert hpa["spec"]["scaleTargetRef"]["name"] == fetcher["metadata"]["name"]
    assert "replicas" not in fetcher["spec"]


def test_without_autoscaling_neither_and_fixed_replicas() -> None:
    """KEDA only acts when autoscaling is on: `keda.enabled` alone renders neither."""
    keda_alone = {"fetcher": {"autoscaling": {"enabled": False, "keda": {"enabled": True}}}}
    cases = [
        (rendered("defaults"), 2),
        (
            render(deep_merge(load_values(ALL_ON), keda_alone)),
            load_values(ALL_ON)["fetcher"]["replicaCount"],
        ),
    ]
    for docs, replicas in cases:
        assert not by_kind(docs, "ScaledObject") and not by_kind(docs, "HorizontalPodAutoscaler")
        assert deployment(docs, "fetcher")["spec"]["replicas"] == replicas


def test_hpa_cannot_scale_to_zero() -> None:
    values = deep_merge(KEDA_OFF, {"fetcher": {"autoscaling": {"enabled": True, "minReplicas": 0}}})
    assert "only KEDA scales to zero" in fails_to_render(values)


# --- partition bounds ----------------------------------------------------------------------


def test_appender_replicas_beyond_append_partitions_fail_the_render() -> None:
    message = fails_to_render(
        {"appender": {"replicaCount": 9}, "kafka": {"topics": {"append": {"partitions": 8}}}}
    )
    assert "appender.replicaCount (9) exceeds kafka.topics.append.partitions (8)" in message
    # As many appenders as partitions is fine, and never more during a rollout.
    docs = render(
        {"appender": {"replicaCount": 8}, "kafka": {"topics": {"append": {"partitions": 8}}}}
    )
    appender = deployment(docs, "appender")
    assert appender["spec"]["replicas"] == 8
    assert appender["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_fetchers_beyond_urls_partitions_fail_the_render() -> None:
    assert "exceeds kafka.topics.urls.partitions" in fails_to_render(
        {"fetcher": {"replicaCount": 17}}
    )
    values = {"fetcher": {"autoscaling": {"enabled": True, "maxReplicas": 17}}}
    assert "fetcher.autoscaling.maxReplicas (17)" in fails_to_render(values)


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    values = load_values(ALL_ON)
    docs = rendered("all-on")
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == values["grafanaDashboard"]["annotations"]
    shipped = json.loads(cm["data"]["img2dataset.json"])
    source = json.loads(DASHBOARD.read_text())
    uid = values["grafanaDashboard"]["datasourceUid"]
    assert shipped["uid"] == source["uid"], "the dashboard's own uid stays stable"
    assert json.dumps(shipped).count(f'"uid": "{uid}"') == json.dumps(source).count(
        '"uid": "prometheus"'
    )
    assert shipped["panels"][1]["datasource"] == {"type": "prometheus", "uid": uid}
    # Queries that select a consumer group select this release's.
    exprs = json.dumps(shipped)
    assert 'group=\\"appender\\"' in json.dumps(source)
    assert 'group=\\"appender\\"' not in exprs
    assert f'group=\\"{values["appender"]["groupId"]}\\"' in exprs
    default = [d for d in by_kind(rendered("defaults"), "ConfigMap")]
    assert not [d for d in default if d["metadata"]["name"].endswith("-dashboard")]
