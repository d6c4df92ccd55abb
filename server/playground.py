# SPDX-License-Identifier: Apache-2.0
"""The opt-in playground page (``--playground``; docs/kept-patches.md, docs/security.md).

One static page at :data:`PLAYGROUND_PATH`, served by the pruning middleware of every API-server
process when the setting is on (404 otherwise, as any unknown path): upload an image, type a
question, pick keep ratio, method and lambda; the page calls ``/v1/chat/completions`` of the same
server with ``pruning_detail`` and draws the kept patches over the image next to the answer
(with "Heat map" ticked it also asks ``pruning_detail_scores`` and shades every patch by its
score, the kept ones still outlined).
Plain HTML and one inline script: no build step, no external asset, nothing stored. A strict
Content-Security-Policy allows only that script (by its hash), same-origin requests and local
images.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mipruner_vllm.config import PRUNING_PARAMETERS

PLAYGROUND_PATH = "/playground"

_SCRIPT = r"""
const $ = (id) => document.getElementById(id);
let picture = null;
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => { picture = { url: reader.result, img }; draw(null); };
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
});
$("ratio").addEventListener("input", () => { $("ratio-value").textContent = $("ratio").value; });
$("lambda").addEventListener("input", () => { $("lambda-value").textContent = $("lambda").value; });

// Blue (low), yellow, red (high), as mipruner-vllm explain --scores draws them.
const STOPS = [[40, 70, 220], [250, 230, 60], [220, 30, 30]];
function heatColour(x) {
  const [a, b, s] = x <= 0.5 ? [STOPS[0], STOPS[1], 2 * x] : [STOPS[1], STOPS[2], 2 * x - 1];
  const c = a.map((p, i) => Math.round(p + (b[i] - p) * s));
  return "rgba(" + c.join(", ") + ", 0.55)";
}

function draw(item) {
  const canvas = $("overlay");
  const img = picture.img;
  const scale = Math.min(1, 480 / Math.max(img.width, img.height));
  canvas.width = Math.round(img.width * scale);
  canvas.height = Math.round(img.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  canvas.dataset.keptCells = "0";
  canvas.dataset.heatCells = "0";
  if (!item) return;
  const [t, h, w] = item.grid;
  const kept = new Set(item.kept.filter((i) => i < h * w));
  const scores = item.scores ? item.scores.slice(0, h * w) : null;
  const low = scores ? Math.min(...scores) : 0, high = scores ? Math.max(...scores) : 0;
  let shaded = 0;
  ctx.fillStyle = "rgba(0, 0, 0, 0.72)";
  ctx.strokeStyle = "#ffc400";
  ctx.lineWidth = 2;
  let drawn = 0;
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const x0 = Math.floor(c * canvas.width / w), x1 = Math.floor((c + 1) * canvas.width / w);
      const y0 = Math.floor(r * canvas.height / h), y1 = Math.floor((r + 1) * canvas.height / h);
      if (scores) {
        const x = high > low ? (scores[r * w + c] - low) / (high - low) : 0.5;
        ctx.fillStyle = heatColour(x);
        ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        shaded++;
      }
      if (kept.has(r * w + c)) {
        ctx.strokeRect(x0 + 1, y0 + 1, x1 - x0 - 2, y1 - y0 - 2);
        drawn++;
      } else if (!scores) ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
  canvas.dataset.keptCells = String(drawn);
  canvas.dataset.heatCells = String(shaded);
}

async function model(headers) {
  if ($("model").value) return $("model").value;
  const response = await fetch("/v1/models", { headers });
  const models = await response.json();
  return models.data[0].id;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!picture) { $("status").textContent = "Choose an image first."; return; }
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
  $("status").textContent = "Asking...";
  $("answer").textContent = "";
  const body = {
    model: await model(headers),
    messages: [{ role: "user", content: [
      { type: "image_url", image_url: { url: picture.url } },
      { type: "text", text: $("question").value } ] }],
    max_tokens: 64, temperature: 0,
    keep_ratio: Number($("ratio").value), pruning_method: $("method").value,
    mi_lambda: Number($("lambda").value), pruning_detail: true,
  };
  if ($("heat").checked) body.pruning_detail_scores = true;
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers, body: JSON.stringify(body) });
  const payload = await response.json();
  if (!response.ok) {
    const reason = payload.error ? payload.error.message : response.status;
    $("status").textContent = "Refused: " + reason;
    return;
  }
  const item = payload.usage.pruning_detail[0];
  draw(item.grid && item.kept ? item : null);
  $("answer").textContent = payload.choices[0].message.content;
  $("kept-count").textContent = String(item.visual_tokens_kept);
  $("total-count").textContent = String(item.visual_tokens);
  $("ran").textContent = item.method + (item.fallback ? " (fallback: " + item.fallback + ")" : "");
  $("scores").textContent = !$("heat").checked ? "" : item.scores
    ? "Heat map: " + item.score + "; blue low, red high."
    : "No heat map: " + item.scores_omitted;
  $("status").textContent = "Done.";
});
"""


def _page() -> str:
    methods = next(p.choices for p in PRUNING_PARAMETERS if p.name == "method") or ()
    options = "".join(
        f'<option value="{html.escape(m)}"{" selected" if m == "mi" else ""}>{html.escape(m)}'
        "</option>"
        for m in methods
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MI-Pruner playground</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
form {{ display: grid; grid-template-columns: max-content 1fr; gap: .5em 1em; max-width: 40em; }}
#result {{ display: flex; gap: 2em; margin-top: 1.5em; align-items: flex-start; }}
#overlay {{ border: 1px solid #ccc; max-width: 480px; }}
#answer {{ white-space: pre-wrap; max-width: 30em; }}
</style></head>
<body>
<h1>MI-Pruner playground</h1>
<p>Which image patches does the model keep for your question? Dimmed patches were pruned, outlined
ones kept.</p>
<form id="form">
<label for="file">Image</label><input id="file" type="file" accept="image/*">
<label for="question">Question</label>
<input id="question" type="text" value="What is in the picture?">
<label for="ratio">Keep ratio</label>
<span><input id="ratio" type="range" min="0.05" max="1" step="0.05" value="0.25">
<output id="ratio-value">0.25</output></span>
<label for="method">Method</label><select id="method">{options}</select>
<label for="lambda">Lambda</label>
<span><input id="lambda" type="range" min="0" max="1" step="0.05" value="1">
<output id="lambda-value">1</output></span>
<label for="heat">Heat map</label>
<span><input id="heat" type="checkbox"> shade the patches by their score (pruning_detail_scores)
</span>
<label for="model">Model</label><input id="model" type="text" placeholder="the first served">
<label for="key">API key</label>
<input id="key" type="password" placeholder="if the server needs one">
<span></span><button id="ask" type="submit">Ask</button>
</form>
<p id="status" role="status"></p>
<div id="result">
<canvas id="overlay" width="0" height="0" data-kept-cells="0" data-heat-cells="0"></canvas>
<div><p>Kept <b id="kept-count">-</b> of <b id="total-count">-</b> visual tokens; method
<b id="ran">-</b>.</p><p id="scores"></p><p id="answer"></p></div>
</div>
<script>{_SCRIPT}</script>
</body></html>
"""


PAGE = _page().encode()
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
#: Only the page's own script, same-origin requests, and images the user chose (data URLs).
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


async def send_page(send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(PAGE)).encode()),
                (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": PAGE})
