# SPDX-License-Identifier: Apache-2.0
"""Strict schema validation of the Kubernetes manifests under ``deploy/k8s``."""

from __future__ import annotations

import importlib

# The Kubernetes release whose schemas the manifests are validated against.
K8S_VERSION = "1.33"

# Custom resources have no upstream Kubernetes schema: they are checked with the generated
# models of their operator's API group instead.
_CUSTOM_RESOURCE_MODELS = {
    "monitoring.coreos.com/": "cloudcoil.models.prometheus_operator.v1",
    "networking.istio.io/": "cloudcoil.models.istio.networking.v1",
}


def validate_manifest(doc: dict) -> None:
    """Strict schema validation: unknown fields are errors. A custom resource is checked with its
    generated model, where a round trip that changes the document means unknown keys."""
    for group, module in _CUSTOM_RESOURCE_MODELS.items():
        if doc["apiVersion"].startswith(group):
            model = getattr(importlib.import_module(module), doc["kind"]).model_validate(doc)
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc, (
                f"unknown fields in {doc['kind']}"
            )
            return
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
