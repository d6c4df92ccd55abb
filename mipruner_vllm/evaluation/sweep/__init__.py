# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm eval-sweep``: accuracy, visual tokens kept and TTFT against keep ratio.

Given an endpoint and a grid of settings, it runs every setting over one dataset and writes

* ``sweep.csv``: one row per setting (per setting and task for lmms-eval tasks) with the
  status, accuracy, requests failed, visual tokens in / kept, TTFT and wall time;
* ``sweep.png``: accuracy and TTFT against keep ratio, one line per method (and lambda), the
  spread of the two keep-ratio-1.0 runs drawn as the noise floor;
* ``sweep.json``: the command line, the server's vLLM version, the client's package versions and
  the machine (the load average on the client);
* ``runs/<n>-<setting>/``: each run's raw output (``samples.jsonl`` for a JSONL dataset; the
  lmms-eval output folder and the model's ``usage.json`` for tasks).

The dataset is either a JSONL of image / question / answer
(:mod:`mipruner_vllm.evaluation.data`), sent with the official openai client (streamed, so TTFT
is measured per request), or an lmms-eval task list,
run through ``lmms-eval --model mipruner`` once per setting and task. Keep ratio 1.0 is always
run twice. A setting is scored only if every request succeeded (``--allow-failed`` relaxes
that) and the endpoint reported the visual tokens it kept; otherwise its row says ``failed``
with the first error, and the plot leaves it out. The tools do fail silently: a 400 on every
request still lets lmms-eval exit 0 with an accuracy of zero.

Layout: :mod:`.settings` (the grid), :mod:`.jsonl` and :mod:`.lmms` (one run of each kind),
:mod:`.rows` (a run's CSV row), :mod:`.serverside` (the server's TTFT), :mod:`.report` (CSV,
plot, metadata) and :mod:`.cli` (the command line).
"""

from __future__ import annotations

from mipruner_vllm.evaluation.sweep.cli import main, parser
from mipruner_vllm.evaluation.sweep.jsonl import run_jsonl_setting, warm_up
from mipruner_vllm.evaluation.sweep.lmms import (
    lmms_eval_command,
    read_lmms_eval_results,
    run_lmms_eval_setting,
)
from mipruner_vllm.evaluation.sweep.report import plot, write_csv, write_meta
from mipruner_vllm.evaluation.sweep.rows import SweepRow
from mipruner_vllm.evaluation.sweep.serverside import SERVER_TTFT_METRIC, server_ttft_totals
from mipruner_vllm.evaluation.sweep.settings import (
    Setting,
    build_settings,
    parse_fields,
    parse_value,
)

__all__ = [
    "SERVER_TTFT_METRIC",
    "Setting",
    "SweepRow",
    "build_settings",
    "lmms_eval_command",
    "main",
    "parse_fields",
    "parse_value",
    "parser",
    "plot",
    "read_lmms_eval_results",
    "run_jsonl_setting",
    "run_lmms_eval_setting",
    "server_ttft_totals",
    "warm_up",
    "write_csv",
    "write_meta",
]
