# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm eval-sweep`` against a real server (the tiny demo checkpoint).

The commands are read from docs/evaluation.md (the block marked ``tested:``) and run as they
are written there, with only the server's address and the working folder changed, plus one
setting the server rejects (``mi_tau=5000``) to check that a rejected setting is reported as
failed, not scored. Twelve generated images, seven settings: about 90 small requests.
"""

from __future__ import annotations

import csv
import json
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
# The shared server's arguments (tests/server/conftest.py DEFAULT_ARGS): no extra engine starts.
SHARED_SERVER_ARGS = ("--max-num-seqs", "32")


def documented_commands() -> list[str]:
    """The commands of the docs' block marked ``<!-- tested: tests/server/test_eval_sweep.py``."""
    text = DOCS.read_text()
    match = re.search(r"<!-- tested: tests/server/test_eval_sweep\.py[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert match, "docs/evaluation.md lost its tested command block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def to_argv(command: str, base_url: str) -> list[str]:
    argv = shlex.split(command.replace(DOCS_URL, base_url))
    executables = {"python": sys.executable, "mipruner-vllm": str(Path(sys.executable).with_name("mipruner-vllm"))}
    return [executables.get(argv[0], argv[0]), *argv[1:]]


@pytest.fixture(scope="module")
def sweep(server_with, tmp_path_factory):
    server = server_with(*SHARED_SERVER_ARGS, name="default")
    work = tmp_path_factory.mktemp("eval-sweep")
    commands = documented_commands()
    assert [c.split()[:3] for c in commands] == [
        ["python", "-m", "mipruner_vllm.evaluation.data"], ["mipruner-vllm", "eval-sweep", "--base-url"]
    ]  # fmt: skip
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
    return {"work": work, "out": out, "rows": rows, "procs": outputs}


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
        "keep_ratio=1.0", "keep_ratio=1.0 (run 2)",
        "keep_ratio=0.5,pruning_method=mi", "keep_ratio=0.5,pruning_method=random",
        "keep_ratio=0.25,pruning_method=mi", "keep_ratio=0.25,pruning_method=random",
        REJECTED,
    ]  # fmt: skip
    for row in rows[:-1]:
        assert (row["status"], row["items"], row["requests_failed"]) == ("ok", "12", "0"), row
        assert row["accuracy"] != "" and 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["ttft_s_p50"]) > 0 and float(row["server_ttft_s_mean"]) > 0
    rejected = rows[-1]
    assert (rejected["status"], rejected["requests_failed"], rejected["accuracy"]) == ("failed", "12", "")
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
            assert sample["visual_tokens_kept"] == n_keep(n_visual[item_id], keep_ratio=ratio), (row["setting"], sample)
        assert int(row["visual_tokens"]) == sum(n_visual.values())
        assert int(row["visual_tokens_kept"]) == sum(s["visual_tokens_kept"] for s in samples.values())
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
        assert [s["correct"] for s in samples] == [is_correct(s["prediction"], s["answers"]) for s in samples]


def test_the_plot_is_written(sweep):
    png = (sweep["out"] / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
