# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm eval-sweep`` against a real server (the embedded demo checkpoint).

The commands are read from docs/evaluation.md (the block marked ``tested:``) and run as they
are written there, with only the server's address and the working folder changed, plus one
setting the server rejects (``mi_tau=5000``) to check that a rejected setting is reported as
failed, not scored. Twelve generated images, seven settings: about 90 small requests.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mipruner_vllm.evaluation.data import is_correct
from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
DOCS_URL = "http://127.0.0.1:8000/v1"
REJECTED = "keep_ratio=0.25,mi_tau=5000"


def documented_commands(block: str) -> list[str]:
    """The commands of the docs' block marked
    ``<!-- tested: tests/server/test_eval_sweep.py (block) -->``."""
    text = DOCS.read_text()
    marker = re.escape(f"<!-- tested: tests/server/test_eval_sweep.py ({block}) -->")
    match = re.search(marker + r"\s*```bash\n(.*?)```", text, re.S)
    assert match, f"docs/evaluation.md lost its tested command block ({block})"
    return [line for line in match.group(1).splitlines() if line.strip()]


def to_argv(command: str, base_url: str, python: str = sys.executable) -> list[str]:
    argv = shlex.split(command.replace(DOCS_URL, base_url))
    executables = {
        "python": python,
        **{name: str(Path(python).with_name(name)) for name in ("mipruner-vllm", "lmms-eval")},
    }
    return [executables.get(argv[0], argv[0]), *argv[1:]]


# One sweep per module, on the shared embedded-default server (the ``server`` fixture of
# tests/server/conftest.py, function-scoped because the pool may swap servers between modules):
# the first test runs it, the others read its files.
_SWEEPS: dict[str, dict] = {}


@pytest.fixture()
def sweep(server, tmp_path_factory):
    if server.base_url not in _SWEEPS:
        _SWEEPS[server.base_url] = _run_documented_sweep(server, tmp_path_factory)
    return _SWEEPS[server.base_url]


def _run_documented_sweep(server, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("eval-sweep")
    commands = documented_commands("jsonl")
    assert [c.split()[:3] for c in commands] == [
        ["python", "-m", "mipruner_vllm.evaluation.data"],
        ["mipruner-vllm", "eval-sweep", "--base-url"],
    ]
    outputs = []
    for i, command in enumerate(commands):
        argv = to_argv(command, server.api)
        if i == len(commands) - 1:
            argv += ["--setting", REJECTED]
        proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=1200)
        outputs.append(proc)
        print(proc.stdout[-3000:], proc.stderr[-3000:])
    out = work / "eval-demo" / "sweep"
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {"work": work, "out": out, "rows": rows, "procs": outputs, "server": server}


def _samples(out: Path, number: int) -> dict[str, dict]:
    (run,) = (out / "runs").glob(f"{number:02d}-*")
    lines = (run / "samples.jsonl").read_text().splitlines()
    return {s["id"]: s for s in map(json.loads, lines)}


def test_one_row_per_setting_and_the_rejected_one_fails(sweep):
    data, run = sweep["procs"]
    assert data.returncode == 0, data.stderr
    assert (sweep["work"] / "eval-demo" / "items.jsonl").is_file()
    # Exit status 2: some settings failed, the others were scored.
    assert run.returncode == 2, run.stdout + run.stderr
    rows = sweep["rows"]
    assert [r["setting"] for r in rows] == [
        "keep_ratio=1.0",
        "keep_ratio=1.0 (run 2)",
        "keep_ratio=0.5,pruning_method=mi",
        "keep_ratio=0.5,pruning_method=random",
        "keep_ratio=0.25,pruning_method=mi",
        "keep_ratio=0.25,pruning_method=random",
        REJECTED,
    ]
    for row in rows[:-1]:
        assert (row["status"], row["items"], row["requests_failed"]) == ("ok", "12", "0"), row
        assert row["accuracy"] != "" and 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["ttft_s_p50"]) > 0 and float(row["server_ttft_s_mean"]) > 0
    rejected = rows[-1]
    assert (rejected["status"], rejected["requests_failed"], rejected["accuracy"]) == (
        "failed",
        "12",
        "",
    )
    assert rejected["visual_tokens_kept"] == ""
    assert "400" in rejected["error"] and "mi_tau" in rejected["error"]
    assert "failed" in run.stdout and "mi_tau" in run.stdout


def test_visual_tokens_kept_follow_the_budget_rule_per_item(sweep):
    rows, out = sweep["rows"], sweep["out"]
    full = _samples(out, 1)
    n_visual = {item_id: s["visual_tokens"] for item_id, s in full.items()}
    # The generated sizes give several token counts, so a per-item ceil differs from a total one.
    assert len(set(n_visual.values())) >= 3, n_visual
    kept_by_ratio = {}
    for number, row in enumerate(rows[:-1], start=1):
        ratio = float(row["keep_ratio"])
        samples = _samples(out, number)
        assert set(samples) == set(n_visual)
        for item_id, sample in samples.items():
            assert sample["error"] is None
            assert sample["visual_tokens"] == n_visual[item_id]
            assert sample["visual_tokens_kept"] == n_keep(n_visual[item_id], keep_ratio=ratio), (
                row["setting"],
                sample,
            )
        assert int(row["visual_tokens"]) == sum(n_visual.values())
        assert int(row["visual_tokens_kept"]) == sum(
            s["visual_tokens_kept"] for s in samples.values()
        )
        kept_by_ratio.setdefault(ratio, set()).add(int(row["visual_tokens_kept"]))
    assert kept_by_ratio[1.0] == {sum(n_visual.values())}
    (k100,), (k050,), (k025,) = kept_by_ratio[1.0], kept_by_ratio[0.5], kept_by_ratio[0.25]
    assert k100 > k050 > k025
    # Fewer visual tokens, shorter prompts: the pruned tokens are gone from what the model ran.
    prompt = {float(r["keep_ratio"]): float(r["prompt_tokens_mean"]) for r in rows[:-1]}
    assert prompt[1.0] - prompt[0.25] == pytest.approx((k100 - k025) / 12)


def test_accuracy_is_the_score_of_the_saved_predictions(sweep):
    for number, row in enumerate(sweep["rows"][:-1], start=1):
        samples = _samples(sweep["out"], number).values()
        assert all(isinstance(s["prediction"], str) for s in samples)
        recomputed = sum(is_correct(s["prediction"], s["answers"]) for s in samples) / len(samples)
        assert float(row["accuracy"]) == pytest.approx(recomputed)
        assert [s["correct"] for s in samples] == [
            is_correct(s["prediction"], s["answers"]) for s in samples
        ]


def test_the_plot_and_the_run_description_are_written(sweep):
    png = (sweep["out"] / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    meta = json.loads((sweep["out"] / "sweep.json").read_text())
    assert meta["model"] == "mipruner-demo" and meta["server_vllm_version"].startswith("0.32")
    assert (meta["runs"], meta["failed"]) == (7, 1) and meta["client"]["mipruner-vllm"]


# lmms-eval is not in CI (a heavy optional extra). It runs here when this interpreter has it, or
# the one named by MIPRUNER_TEST_LMMS_EVAL_PYTHON (a client-side environment with
# "mipruner-vllm[eval]" and no vLLM: the server still runs from this one).
LMMS_EVAL_PYTHON = os.environ.get("MIPRUNER_TEST_LMMS_EVAL_PYTHON", sys.executable)


def _has_lmms_eval(python: str) -> bool:
    probe = subprocess.run(
        [
            python,
            "-c",
            "import lmms_eval.models.chat.openai, mipruner_vllm.evaluation.lmms_eval_model",
        ],
        capture_output=True,
        timeout=300,
    )
    return probe.returncode == 0


def test_lmms_eval_model_and_sweep_through_lmms_eval(sweep):
    if not _has_lmms_eval(LMMS_EVAL_PYTHON):
        pytest.skip(
            "lmms-eval is not installed (optional extra mipruner-vllm[eval]; not in CI: too "
            "heavy); set MIPRUNER_TEST_LMMS_EVAL_PYTHON to a Python that has it"
        )
    work, server = sweep["work"], sweep["server"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    procs = []
    for command in documented_commands("lmms-eval"):
        proc = subprocess.run(
            to_argv(command, server.api, LMMS_EVAL_PYTHON),
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        procs.append(proc)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    n_visual = [s["visual_tokens"] for s in _samples(sweep["out"], 1).values()]

    # One lmms-eval run at keep ratio 0.25: the model's report counts what the server kept.
    usage = json.loads((work / "eval-demo" / "lmms" / "usage.json").read_text())
    assert usage["pruning_fields"] == {"keep_ratio": 0.25}
    assert (usage["requests"], usage["requests_failed"], usage["samples_failed"]) == (12, 0, 0)
    assert usage["visual_tokens"] == sum(n_visual)
    assert usage["visual_tokens_kept"] == sum(n_keep(n, keep_ratio=0.25) for n in n_visual)
    (results,) = (work / "eval-demo" / "lmms").glob("**/*_results.json")
    assert json.loads(results.read_text())["n-samples"]["mipruner_jsonl"]["effective"] == 12

    # The sweep through lmms-eval: one row per setting, scored from lmms-eval's results.
    with (work / "eval-demo" / "sweep-lmms" / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["setting"] for r in rows] == [
        "keep_ratio=1.0",
        "keep_ratio=1.0 (run 2)",
        "keep_ratio=0.25,pruning_method=mi",
    ]
    assert all(r["status"] == "ok" and r["dataset"] == "lmms-eval:mipruner_jsonl" for r in rows), (
        rows
    )
    assert all(r["metric"] == "exact_match_score,none" and r["accuracy"] != "" for r in rows)
    assert [int(r["visual_tokens_kept"]) for r in rows] == [sum(n_visual)] * 2 + [
        usage["visual_tokens_kept"]
    ]
    assert (work / "eval-demo" / "sweep-lmms" / "sweep.png").is_file()
