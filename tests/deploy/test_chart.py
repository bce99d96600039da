"""The Helm chart: lint, render with defaults and with GPU + KEDA + secrets, reject bad values.

helm-python-sdk renders offline through Helm's own Go SDK (schema validation and `fail` included).
A missing package is an error, not a skip: CI installs the dev extra.
"""
from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from workers.settings import Settings, definition, kind

CHART = Path(__file__).resolve().parents[2] / "helm" / "cased-stream"

# Distinctive fake secrets: they must never reach a rendered manifest or an error message.
FAKE_S3_KEY_ID = "AKIAFAKEKEYID0123456789"
FAKE_S3_SECRET = "fake-s3-secret-Zq8wXv3Lp"
FAKE_SASL_PASSWORD = "fake-sasl-password-Hn4Kd9Tr"
FAKE_SECRETS = (FAKE_S3_KEY_ID, FAKE_S3_SECRET, FAKE_SASL_PASSWORD)

SECURE = {
    "gpu": {
        "enabled": True,
        "count": 2,
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "autoscaling": {"mode": "keda", "minReplicas": 2, "maxReplicas": 12, "keda": {"lagThreshold": 20}},
    "kafka": {
        "bootstrapServers": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"],
        "appId": "cased-prod",
        "topics": {"images": "cams.images", "labels": "cams.labels", "deadLetters": "cams.dlq"},
        "partitions": 12,
        "security": {
            "protocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-512", "existingSecret": "kafka-user",
                     "usernameKey": "user", "passwordKey": "pass"},
            "tls": {"caSecret": "kafka-ca", "caKey": "root.pem"},
        },
    },
    "s3": {"endpoint": "http://minio:9000", "region": "eu-west-1", "existingSecret": "s3-creds",
           "accessKeyIdKey": "key-id", "secretAccessKeyKey": "key-secret"},
    "telemetry": {"otlpEndpoint": "http://otel-collector:4317"},
    "model": {"name": "ViT-L-14", "pretrained": "openai"},
    "database": {"uri": "s3://models/dbs/cc12m"},
}


def render(values: dict | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name="rel", namespace="vision")


def manifests(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict]) -> set[str]:
    return {d["kind"] for d in docs}


def worker(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_refs(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_lint_clean():
    report = helm.lint(CHART)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # no warnings either
    # The secure configuration lints too (values are schema-checked by lint).
    assert helm.lint(CHART, SECURE)["errors"] == []


def test_defaults_render_a_hardened_worker():
    docs = manifests(render())
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget", "ServiceAccount"} <= kinds(docs)
    assert not {"ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler"} & kinds(docs)

    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = worker(docs)
    assert deploy["spec"]["replicas"] == 1
    assert c["ports"] == [{"name": "http", "containerPort": 6066, "protocol": "TCP"}]
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model + database download
    assert pod["terminationGracePeriodSeconds"] >= 60

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/cache", "/tmp", "/data"):  # writable despite the read-only root
        assert "emptyDir" in volumes[mounts[path]], path
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "checksum/config" in deploy["spec"]["template"]["metadata"]["annotations"]

    config = one(docs, "ConfigMap")
    assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    data = config["data"]
    assert data["CASED_BROKER"] == "kafka://kafka:9092"
    assert data["CASED_APP_ID"] == "cased-workers"
    assert data["CASED_IMAGES_TOPIC"] == "images.in"
    assert data["CASED_CACHE_DIR"] == "/cache"
    assert data["CASED_WEB_PORT"] == "6066"
    assert data["CASED_DEVICE"] == "auto"
    assert data["CASED_HISTORY_POLICY"] == "steady"
    settings = Settings.from_env(data)  # the chart's history defaults are the worker's
    assert (settings.history_similarity, settings.history_margin, settings.history_patience,
            settings.history_patience_s, settings.history_stillness) == (
        Settings.history_similarity, Settings.history_margin, Settings.history_patience, Settings.history_patience_s,
        Settings.history_stillness)
    assert all(isinstance(v, str) for v in data.values())  # ConfigMap data must be strings

    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 6066
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_config_change_rolls_pods():
    def checksum(values):
        return one(manifests(render(values)), "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]
    assert checksum(None) != checksum({"batching": {"batchSize": 32}})


def test_gpu_keda_and_secrets():
    rendered = render(SECURE)
    docs = manifests(rendered)
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = worker(docs)
    data = one(docs, "ConfigMap")["data"]

    # GPU
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert data["CASED_DEVICE"] == "cuda"

    # KEDA owns the replica count and measures the group the workers really join.
    assert "replicas" not in deploy["spec"]
    scaled = one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == data["CASED_APP_ID"] == "cased-prod"
    assert meta["topic"] == data["CASED_IMAGES_TOPIC"] == "cams.images"
    assert data["CASED_BROKER"] == "kafka://" + meta["bootstrapServers"]
    assert meta["lagThreshold"] == "20"
    assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] <= int(data["CASED_PARTITIONS"])
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"username": ("kafka-user", "user"), "password": ("kafka-user", "pass"),
                    "ca": ("kafka-ca", "root.pem")}

    # Secrets are referenced, never inlined.
    env = env_refs(c)
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "key-id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "key-secret"}
    assert env["CASED_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-user", "key": "pass"}
    assert env["CASED_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-user", "key": "user"}
    assert all("value" not in e for e in env.values())
    assert "Secret" not in kinds(docs)
    ca_mount = next(m for m in c["volumeMounts"] if m["name"] == "kafka-ca")
    ca_volume = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")
    assert ca_volume["secret"]["secretName"] == "kafka-ca"
    assert ca_volume["secret"]["items"] == [{"key": "root.pem", "path": "ca.crt"}]
    assert data["CASED_KAFKA_CA_FILE"] == ca_mount["mountPath"] + "/ca.crt"
    assert data["CASED_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["CASED_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"

    # Telemetry, model, database.
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert data["OTEL_SERVICE_NAME"]
    assert data["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert (data["CASED_MODEL"], data["CASED_PRETRAINED"]) == ("ViT-L-14", "openai")
    assert data["CASED_DATABASE"] == "s3://models/dbs/cc12m"

    assert "PodDisruptionBudget" in kinds(docs)
    assert "HorizontalPodAutoscaler" not in kinds(docs)
    text = "\n".join(rendered.values())
    assert not any(secret in text for secret in FAKE_SECRETS)


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("attempt", [
    {"s3": {"accessKeyId": FAKE_S3_KEY_ID, "secretAccessKey": FAKE_S3_SECRET}},
    {"kafka": {"security": {"sasl": {"password": FAKE_SASL_PASSWORD}}}},
    {"extraEnv": {"AWS_SECRET_ACCESS_KEY": FAKE_S3_SECRET}},
    {"extraEnv": {"CASED_KAFKA_SASL_PASSWORD": FAKE_SASL_PASSWORD}},
])
def test_inline_secrets_are_refused_without_echoing_them(attempt):
    """There is no value that inlines a secret: each attempt fails, and the error does not leak it."""
    with pytest.raises(helm.HelmError) as err:
        render(merged(SECURE, attempt))
    assert not any(secret in str(err.value) for secret in FAKE_SECRETS)


def test_hpa_mode():
    docs = manifests(render({"autoscaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": 4}}))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "ScaledObject" not in kinds(docs)
    assert "replicas" not in one(docs, "Deployment")["spec"]


def test_existing_cache_claim_and_min_available():
    docs = manifests(render({"cache": {"existingClaim": "cased-cache"},
                             "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None}}))
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": "cased-cache"}}
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 1, "selector": one(docs, "PodDisruptionBudget")["spec"]["selector"]}


@pytest.mark.parametrize("values, message", [
    ({"replicas": 0}, "/replicas"),
    ({"replicas": "3"}, "/replicas"),
    ({"autoscaling": {"mode": "bogus"}}, "/autoscaling/mode"),
    ({"history": {"policy": "sometimes"}}, "/history/policy"),
    ({"history": {"patience": 0}}, "/history/patience"),
    ({"history": {"similarity": 1.5}}, "/history/similarity"),
    ({"device": "tpu"}, "/device"),
    ({"kafka": {"partitions": 0}}, "/kafka/partitions"),
    ({"kafka": {"bootstrapServers": ["kafka://kafka:9092"]}}, "/kafka/bootstrapServers"),
    ({"kafka": {"security": {"protocol": "SASL_SSL"}}}, "existingSecret"),
    ({"autoscaling": {"mode": "keda", "minReplicas": 0}}, "/autoscaling/minReplicas"),
    ({"autoscaling": {"mode": "keda", "maxReplicas": 9}}, "exceeds kafka.partitions (8)"),
    ({"autoscaling": {"mode": "hpa", "maxReplicas": 16}, "kafka": {"partitions": 12}},
     "exceeds kafka.partitions (12)"),
    ({"autoscaling": {"mode": "keda", "minReplicas": 4, "maxReplicas": 2}}, "must be >= autoscaling.minReplicas"),
    ({"autoscaling": {"mode": "hpa"}, "resources": {"requests": {"cpu": None}}}, "resources.requests.cpu"),
    ({"model": {"pretrained": "openai", "checkpoint": "s3://m/ckpt.pt"}}, "not both"),
    ({"probes": {"startup": {"periodSeconds": 0, "failureThreshold": 60}}}, "/probes/startup/periodSeconds"),
    ({"logging": {"format": "xml"}}, "/logging/format"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}}, "/metrics/serviceMonitor/interval"),
])
def test_invalid_values_fail_with_a_clear_message(values, message):
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert message in str(err.value)


# Databases of CaSED's size on nodes (docs/databases.md): the startup budget, one copy per node.
CC12M_GIB = 20  # `cased bench db` at 12M x 768: 20 GiB on disk


def startup_budget_s(values: dict | None) -> int:
    probe = worker(manifests(render(values)))["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_the_startup_budget_follows_the_database_download():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    base, rate = defaults["probes"]["startup"]["baseSeconds"], defaults["database"]["downloadMiBps"]
    assert startup_budget_s(None) >= base >= 600  # the tiny database: the model's budget alone
    cc12m = {"database": {"uri": "s3://models/dbs/cc12m", "sizeGiB": CC12M_GIB}}
    download_s = CC12M_GIB * 1024 / rate
    assert startup_budget_s(cc12m) >= base + 2 * download_s  # twice the measured rate's time, for slower links
    slower = merged(cc12m, {"database": {"downloadMiBps": rate / 4}})
    assert startup_budget_s(slower) >= base + 2 * 4 * download_s
    assert startup_budget_s(merged(cc12m, {"probes": {"startup": {"failureThreshold": 12}}})) == 120  # fixed
    claim = merged(cc12m, {"database": {"location": "claim", "claimName": "cc12m"}})
    assert startup_budget_s(claim) < base + 10  # nothing to download


def test_one_copy_of_the_database_per_node():
    values = {"database": {"uri": "s3://models/dbs/cc12m", "sizeGiB": CC12M_GIB, "location": "node",
                           "nodePath": "/mnt/nvme/cased"}}
    assert helm.lint(CHART, values)["errors"] == []
    docs = manifests(render(values))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["hostPath"] == {"path": "/mnt/nvme/cased", "type": "DirectoryOrCreate"}
    assert {"name": "cache", "mountPath": "/cache"} in worker(docs)["volumeMounts"]
    assert one(docs, "ConfigMap")["data"]["CASED_CACHE_DIR"] == "/cache"
    # hostPath ignores fsGroup: an init container hands the folder to the worker's user, with CHOWN only
    (init,) = pod["initContainers"]
    assert init["command"] == ["chown", "10001:10001", "/cache"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker(docs)["securityContext"]["readOnlyRootFilesystem"] is True
    prepared = manifests(render(merged(values, {"database": {"nodeChown": False}})))
    assert "initContainers" not in one(prepared, "Deployment")["spec"]["template"]["spec"]


def test_a_read_only_many_claim_holds_a_prepared_database():
    values = {"database": {"location": "claim", "claimName": "cc12m-vit-l-14", "claimSubPath": "dbs/cc12m"}}
    assert helm.lint(CHART, values)["errors"] == []
    docs = manifests(render(values))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["database"]["persistentVolumeClaim"] == {"claimName": "cc12m-vit-l-14", "readOnly": True}
    mount = next(m for m in worker(docs)["volumeMounts"] if m["name"] == "database")
    assert mount == {"name": "database", "mountPath": "/database", "readOnly": True, "subPath": "dbs/cc12m"}
    assert one(docs, "ConfigMap")["data"]["CASED_DATABASE"] == mount["mountPath"]
    assert "emptyDir" in volumes["cache"]  # the model and vocabularies still have their cache


@pytest.mark.parametrize("values, message", [
    ({"database": {"location": "claim"}}, "set database.claimName"),
    ({"database": {"location": "everywhere"}}, "/database/location"),
    ({"database": {"location": "node"}, "cache": {"existingClaim": "c"}}, "unset cache.existingClaim"),
    ({"database": {"nodePath": "relative/path"}}, "/database/nodePath"),
    ({"database": {"downloadMiBps": 0}}, "/database/downloadMiBps"),
])
def test_invalid_database_locations_fail_with_a_clear_message(values, message):
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert message in str(err.value)


EXAMPLE = CHART / "examples" / "gpu-kafka-s3.yaml"
DEPLOYMENT = CHART.parents[1] / "docs" / "deployment.md"


def test_the_documented_gpu_kafka_s3_example_renders():
    """docs/deployment.md shows this file verbatim; it lints and renders as documented."""
    text = EXAMPLE.read_text()
    assert text.strip() in DEPLOYMENT.read_text(), "docs/deployment.md and examples/gpu-kafka-s3.yaml differ"
    values = yaml.safe_load(text)
    assert helm.lint(CHART, values)["errors"] == []
    rendered = render(values)
    docs = manifests(rendered)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = worker(docs)
    data = one(docs, "ConfigMap")["data"]

    # GPU: the limit, the node selection and CUDA in the worker.
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert data["CASED_DEVICE"] == "cuda"

    # Kafka: SASL_SSL with SCRAM, the credentials and the CA from Secrets.
    env = env_refs(c)
    assert (data["CASED_KAFKA_SECURITY_PROTOCOL"], data["CASED_KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert env["CASED_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-cased", "key": "username"}
    assert env["CASED_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-cased", "key": "password"}
    ca = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")["secret"]
    assert ca == {"secretName": "kafka-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert data["CASED_KAFKA_CA_FILE"].endswith("/ca.crt")
    assert data["CASED_BROKER"] == "kafka://kafka-0.kafka.svc:9093,kafka-1.kafka.svc:9093,kafka-2.kafka.svc:9093"

    # S3: endpoint, allowed buckets, keys from a Secret; model, database, shared cache.
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-cased",
                                                                          "key": "AWS_SECRET_ACCESS_KEY"}
    assert data["AWS_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert data["CASED_S3_BUCKETS"] == "camera-frames,uploads"
    assert (data["CASED_MODEL"], data["CASED_PRETRAINED"]) == ("ViT-L-14", "openai")
    assert data["CASED_DATABASE"].startswith("s3://")
    assert next(v for v in pod["volumes"] if v["name"] == "cache") == {
        "name": "cache", "persistentVolumeClaim": {"claimName": "cased-cache"}}

    # No secret value anywhere: only references, no Secret object, no secret-like ConfigMap key.
    assert all("value" not in e for e in env.values())
    assert "Secret" not in kinds(docs)
    assert not [k for k in data if any(word in k for word in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY"))]

    # KEDA scales on the lag of the group the workers join, within the partition count; OTLP over HTTP.
    (trigger,) = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["consumerGroup"] == data["CASED_APP_ID"]
    assert one(docs, "ScaledObject")["spec"]["maxReplicaCount"] <= int(data["CASED_PARTITIONS"])
    assert {r["parameter"] for r in one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]} == {
        "username", "password", "ca"}
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")


# Chart values -> the setting their CASED_* variable sets (templates/configmap.yaml).
SETTING_OF_VALUE = {
    ("kafka", "partitions"): "partitions",
    ("kafka", "security", "protocol"): "kafka_security_protocol",
    ("kafka", "security", "sasl", "mechanism"): "kafka_sasl_mechanism",
    ("batching", "batchSize"): "batch_size",
    ("batching", "maxWaitSeconds"): "max_wait_s",
    ("history", "policy"): "history_policy",
    ("history", "similarity"): "history_similarity",
    ("history", "margin"): "history_margin",
    ("history", "patience"): "history_patience",
    ("history", "patienceSeconds"): "history_patience_s",
    ("history", "stillness"): "history_stillness",
    ("webPort",): "web_port",
    ("gate", "maxFrames"): "gate_frames",
    ("gate", "maxSeconds"): "gate_seconds",
    ("outageBudgetSeconds",): "outage_budget_s",
    ("logging", "level"): "log_level",
    ("logging", "format"): "log_format",
}


@pytest.mark.parametrize("path, name", SETTING_OF_VALUE.items(), ids=[".".join(p) for p in SETTING_OF_VALUE])
def test_the_values_schema_allows_what_the_setting_allows(path, name):
    """Each value's schema entry carries its setting's bounds and choices, and its default is the
    setting's default: the worker's one settings definition, restated for Helm, checked here."""
    node, default = json.loads((CHART / "values.schema.json").read_text()), yaml.safe_load(
        (CHART / "values.yaml").read_text())
    for key in path:
        node, default = node["properties"][key], default[key]
    meta = definition(name).metadata
    assert node.get("enum") == (list(meta["choices"]) if meta["choices"] else None)
    assert (node.get("minimum"), node.get("maximum"), node.get("exclusiveMinimum")) == \
        (meta["minimum"], meta["maximum"], meta["above"])
    if not meta["choices"]:
        assert node["type"] == {"int": "integer", "float": "number", "str": "string"}[kind(definition(name))]
    assert default == getattr(Settings(), name)


def test_metrics_and_logging_defaults():
    docs = manifests(render())
    assert not {"ServiceMonitor"} & kinds(docs)
    assert len([d for d in docs if d["kind"] == "ConfigMap"]) == 1  # no dashboard unless asked
    data = one(docs, "ConfigMap")["data"]
    settings = Settings.from_env(data)  # the chart's logging defaults are the worker's
    assert (settings.log_level, settings.log_format) == (Settings.log_level, Settings.log_format)
    data = one(manifests(render({"logging": {"format": "json", "level": "warning"}})), "ConfigMap")["data"]
    assert (data["CASED_LOG_FORMAT"], data["CASED_LOG_LEVEL"]) == ("json", "warning")


def test_a_service_monitor_scrapes_every_worker_at_metrics():
    docs = manifests(render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                            "labels": {"release": "kube-prometheus-stack"}}}}))
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # matched by the operator's selector
    # It selects the workers' Service, in the release's namespace, by the Service's port name.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["vision"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == ("/metrics", "15s", "10s")
    assert worker(docs)["ports"][0]["name"] == endpoint["port"]


DASHBOARD = CHART / "dashboards" / "cased-stream.json"


def test_the_grafana_dashboard_is_a_configmap_for_the_sidecar():
    docs = manifests(render({"metrics": {"grafanaDashboard": {"enabled": True,
                                                              "annotations": {"grafana_folder": "Vision"}}}}))
    (board,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"  # the label the sidecar watches
    assert board["metadata"]["annotations"] == {"grafana_folder": "Vision"}
    (name, text), = board["data"].items()
    assert name.endswith(".json") and json.loads(text) == json.loads(DASHBOARD.read_text())


def test_every_dashboard_query_names_metrics_the_worker_serves():
    """The names only; tests/workers/test_prometheus_scrape.py runs every query on a real Prometheus."""
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from tests.workers.test_prometheus import SNAPSHOT
    from workers.prometheus import exposition, registry

    text = exposition(registry(lambda: SNAPSHOT), None)[0].decode()
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b((?:cased|process)_[a-z_]+)", expr)}
    assert used and used <= served, used - served
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"${datasource}"}  # the sidecar's any Prometheus
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
