"""The deployment files: the helm chart of cnr-oci passes `helm lint` and `helm template` (helm 3.8.1 and
4.1.4), and what it renders validates offline against the Kubernetes schemas (kubernetes-validate);
deploy/compose.yaml passes `docker-compose config`."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_binary
from tests.helmcli import Helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "cnr-oci"
COMPOSE = ROOT / "deploy" / "compose.yaml"
VALUES = {"defaults": None, "all-options": CHART / "ci" / "all-options-values.yaml",
          "existing": CHART / "ci" / "existing-values.yaml"}
# Custom resources: kubernetes-validate has schemas for the core kinds only. These are rendered, not
# validated (README, Deploying, says the same).
NOT_VALIDATED = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# The oldest Kubernetes the chart supports (policy/v1, seccompProfile) and the newest schemas shipped.
K8S_VERSIONS = ("1.25.0", "latest")


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is not installed (pip install -e '.[test]')")
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kv


def render(helm: Helm, values: Path | None, *extra: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "apps", *extra]
    if values:
        args += ["-f", str(values)]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_the_chart_passes_helm_lint_strict(helm, values):
    path = VALUES[values]
    out = helm("lint", str(CHART), "--strict", *(["-f", str(path)] if path else []))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_the_rendered_core_kinds_validate_against_the_kubernetes_schemas(helm, values):
    kv = kubernetes_validate()
    docs = render(helm, VALUES[values])
    validated, skipped = [], []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in NOT_VALIDATED:
            skipped.append(doc["kind"])
            continue
        for version in K8S_VERSIONS:
            kv.validate(doc, kv.latest_version() if version == "latest" else version, strict=True)
        validated.append(doc["kind"])
    assert {"Deployment", "Service"} <= set(validated)
    assert skipped == (["ServiceMonitor"] if values == "all-options" else [])


def test_a_schema_violation_is_caught(helm):
    """The control: the validation above can fail (a port as a string, an unknown field)."""
    kv = kubernetes_validate()
    deployment = by_kind(render(helm, None))[("Deployment", "rel-cnr-oci")]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, "1.25.0", strict=True)
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, "1.25.0", strict=True)


def test_defaults_run_n_non_root_replicas_with_probes_redis_and_the_charts_registry(helm):
    docs = by_kind(render(helm, None))
    dep = docs[("Deployment", "rel-cnr-oci")]
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert dep["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65534
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = env_of(dep)
    assert env["CNR_OCI_HOST"] == "0.0.0.0" and env["CNR_OCI_PORT"] == "5000"
    assert env["CNR_OCI_UPSTREAM"] == "http://rel-cnr-oci-registry:5000"
    assert env["CNR_OCI_REDIS_URL"] == "redis://rel-cnr-oci-redis:6379/0"
    assert env["CNR_OCI_TOKEN_SECRET"] == {"secretKeyRef": {"name": "rel-cnr-oci-token", "key": "token-secret"}}
    secret = base64.b64decode(docs[("Secret", "rel-cnr-oci-token")]["data"]["token-secret"])
    assert len(secret) >= 16  # generated: cnr-oci takes a string of at least 16 characters
    for name in ("rel-cnr-oci-redis", "rel-cnr-oci-registry", "rel-cnr-oci"):
        assert ("Service", name) in docs
    assert docs[("Service", "rel-cnr-oci")]["spec"]["ports"][0]["targetPort"] == "http"
    assert ("Deployment", "rel-cnr-oci-redis") in docs and ("Deployment", "rel-cnr-oci-registry") in docs


def test_every_option_reaches_the_server_as_its_cnr_oci_variable(helm):
    docs = by_kind(render(helm, VALUES["all-options"]))
    dep = docs[("Deployment", "rel-cnr-oci")]
    env = env_of(dep)
    creds = "rel-cnr-oci-registry-credentials"
    assert env["CNR_OCI_UPSTREAM"] == "https://registry.example.com"
    assert env["CNR_OCI_REPOSITORY_PREFIX"] == "apps" and env["CNR_OCI_UPSTREAM_TIMEOUT"] == "20"
    assert env["CNR_OCI_TLS_INSECURE"] == "true" and env["CNR_OCI_CA_FILE"] == "/etc/cnr-oci/ca/ca.crt"
    assert env["CNR_OCI_ANONYMOUS_READ"] == "true" and env["CNR_OCI_SERVICE_WRITE"] == "true"
    assert env["CNR_OCI_REGISTRY_USERNAME"] == {"secretKeyRef": {"name": creds, "key": "username"}}
    assert env["CNR_OCI_REGISTRY_PASSWORD"] == {"secretKeyRef": {"name": creds, "key": "password"}}
    assert env["CNR_OCI_CACHE_TTL"] == "5" and env["CNR_OCI_BLOB_REDIRECT"] == "true"
    assert env["CNR_OCI_LOG_LEVEL"] == "warning"
    assert base64.b64decode(docs[("Secret", creds)]["data"]["password"]) == b"service-password"
    token = docs[("Secret", "rel-cnr-oci-token")]["data"]["token-secret"]
    assert base64.b64decode(token) == b"a-token-secret-of-at-least-16-characters"
    assert dep["spec"]["replicas"] == 3
    assert ("Deployment", "rel-cnr-oci-registry") not in docs  # an upstream is given: no own registry
    monitor = docs[("ServiceMonitor", "rel-cnr-oci")]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "5s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert ("PodDisruptionBudget", "rel-cnr-oci") in docs
    no_secrets_in_plain = yaml.safe_dump(dep)
    assert "service-password" not in no_secrets_in_plain and "a-token-secret" not in no_secrets_in_plain


def test_existing_secrets_and_redis_are_used_and_none_is_made(helm):
    docs = by_kind(render(helm, VALUES["existing"]))
    env = env_of(docs[("Deployment", "rel-cnr-oci")])
    assert env["CNR_OCI_TOKEN_SECRET"] == {"secretKeyRef": {"name": "cnr-oci-token", "key": "secret"}}
    assert env["CNR_OCI_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert env["CNR_OCI_REGISTRY_USERNAME"] == {"secretKeyRef": {"name": "registry-credentials", "key": "user"}}
    assert env["CNR_OCI_CA_FILE"] == "/etc/cnr-oci/ca/ca.pem"
    assert not [k for k in docs if k[0] == "Secret"]
    assert ("Deployment", "rel-cnr-oci-redis") not in docs
    storage = docs[("Deployment", "rel-cnr-oci-registry")]["spec"]["template"]["spec"]["volumes"][0]
    assert storage["persistentVolumeClaim"] == {"claimName": "registry-data"}


@pytest.mark.parametrize("bad, message", [
    (["--set", "registry.enabled=false"], "set upstream.url"),
    (["--set", "upstream.url=http://r:5000", "--set", "redis.enabled=false"], "more than one replica needs Redis"),
    # values.schema.json
    (["--set", "replicaCount=two"], "replicaCount"),
    (["--set", "tokenSecret.value=short"], "tokenSecret.value"),
    (["--set", "env.FOO=1"], "FOO"),
    (["--set", "logLevel=loud"], "logLevel"),
    (["--set", "upstream.url=registry:5000"], "upstream.url"),
])
def test_a_deployment_that_cannot_work_is_refused_at_template_time(helm, bad, message):
    with pytest.raises(AssertionError, match=message):
        render(helm, None, *bad)


def docker_compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    require_binary("docker-compose")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CNR_OCI_")} | env
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          timeout=60, cwd=COMPOSE.parent, env=environ)


def test_compose_file_passes_docker_compose_config():
    proc = docker_compose_config(CNR_OCI_TOKEN_SECRET="a-secret-of-at-least-16-chars")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert set(services) == {"registry", "redis", "cnr-oci-1", "cnr-oci-2", "lb"}
    assert services["lb"]["ports"] == [{"published": 5000, "target": 5000}]  # the one port
    assert services["registry"]["environment"]["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    for name in ("cnr-oci-1", "cnr-oci-2"):
        env = services[name]["environment"]
        assert env["CNR_OCI_UPSTREAM"] == "http://registry:5000"
        assert env["CNR_OCI_REDIS_URL"] == "redis://redis:6379/0"
        assert env["CNR_OCI_TOKEN_SECRET"] == "a-secret-of-at-least-16-chars"
        assert "ports" not in services[name] and services[name]["read_only"] is True
    conf = (COMPOSE.parent / "nginx.conf").read_text()
    assert "server cnr-oci-1:5000" in conf and "server cnr-oci-2:5000" in conf


def test_compose_refuses_to_start_replicas_without_a_shared_token_secret():
    proc = docker_compose_config()
    assert proc.returncode != 0 and "set CNR_OCI_TOKEN_SECRET" in proc.stderr
