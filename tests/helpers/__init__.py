# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the test kinds, imported as ``helpers.<module>``.

``pyproject.toml`` puts ``tests/`` on ``sys.path`` for pytest (``pythonpath``), which is the one
way tests share code here besides fixtures: no test edits ``sys.path``.

* :mod:`.server`: start, wait for and stop real ``mipruner-vllm serve`` processes;
* :mod:`.kernels`: inputs and comparisons of the kernel parity tests;
* :mod:`.float64_reference`: independent float64 implementations of the selection equations;
* :mod:`.k8s`: strict schema validation of the Kubernetes manifests.
"""
