"""The --explain report as one self-contained HTML file: plain HTML, CSS and a little JavaScript,
nothing fetched when it is viewed (no CDN, fonts or scripts), so it opens from disk, offline.

explain.py computes the numbers; this module lays them out. Attention weights travel as bytes
(square-root scale), zlib-compressed and base64-encoded; the page inflates them with the browser's
own DecompressionStream and draws them on canvases. A plotting library would add hundreds of
kilobytes for what forty lines of canvas code do.
"""
import base64
import html
import json
import os
import re
import stat
import tempfile
import zlib

import numpy as np

from errors import GPT2Error
from explain import as_bytes


def packed(array: np.ndarray) -> dict:
    """An array as bytes on the square-root scale, deflated and base64-encoded, with its shape."""
    data = zlib.compress(as_bytes(array).tobytes(), 6)
    return {"shape": list(array.shape), "deflated_base64": base64.b64encode(data).decode("ascii")}


def page_data(data: dict, token_text: dict[int, str]) -> dict:
    """The JSON the page's script reads."""
    return {
        "tokens": data["tokens"], "n_prompt": data["n_prompt"], "window_start": data["window_start"],
        "steps": data["steps"], "notes": data["notes"], "card": data["card"],
        "rows": packed(data["attention_rows"]), "thumbnails": packed(data["attention_thumbnails"]),
        "lens_ids": data["lens_ids"].tolist(), "lens_probs": np.round(data["lens_probs"], 4).tolist(),
        "vocab": {str(token): text for token, text in token_text.items()},
    }


def embedded_json(value: object) -> str:
    """JSON that is safe inside <script type="application/json">: every `<` is written as the escape
    \\u003c, so no text in it can close the element (`</script>`) or open a comment (`<!--`)."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def fill(template: str, **values: str) -> str:
    """Put each value in place of its {name} in one pass: a value's own text is never searched again,
    so a prompt holding "{data}" stays that text. Only the names given are placeholders; JavaScript's
    own braces are left alone."""
    pattern = "|".join(re.escape("{" + name + "}") for name in values)
    return re.sub(pattern, lambda match: values[match[0][1:-1]], template)


def render(data: dict, token_text: dict[int, str], title: str) -> str:
    return fill(PAGE, title=html.escape(title), data=embedded_json(page_data(data, token_text)))


def write_page(path: str, option: str, text: str) -> None:
    """Write the page to a temporary file beside `path` (or beside the file a symlink names), then
    rename it over: an existing page is only replaced by a complete one, and a failed write leaves
    no temporary file behind."""
    check_writable(path, option)  # again: the path may have changed during the run
    target = os.path.realpath(path)
    name = None
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(target), suffix=".tmp",
                                         delete=False) as f:
            name = f.name
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # as open() would have made it; temporary files are private
        os.replace(name, target)
    except OSError as e:
        if name is not None and os.path.exists(name):
            os.unlink(name)
        raise GPT2Error(f"cannot write {option} {path}: {e.strerror}; choose another path") from None


def write_report(path: str, data: dict, token_text: dict[int, str], title: str) -> None:
    write_page(path, "--explain", render(data, token_text, title))


def check_writable(path: str, option: str = "--explain") -> None:
    """Fail before any work if the page could not be written. Only a regular file is ever replaced:
    a FIFO, a device such as /dev/null, a folder or a symlink to one of those (or to nothing) is
    refused, since renaming over it would destroy what is there."""
    if os.path.lexists(path):
        try:
            kind = os.stat(path).st_mode
        except OSError:
            raise GPT2Error(f"cannot write {option} {path}: it is a symlink to nothing; choose another path") from None
        if not stat.S_ISREG(kind):
            what = "a folder" if stat.S_ISDIR(kind) else "not a regular file (a FIFO, a device or a socket)"
            raise GPT2Error(f"cannot write {option} {path}: it is {what}; choose another path")
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise GPT2Error(f"cannot write {option} {path}: its folder is missing or not writable; choose another path")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; overflow-wrap: anywhere; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; } .hint { max-width: 52em; }
.tok { display: inline-block; white-space: pre; border-radius: 3px; padding: 0 1px; margin: 1px; }
.p { background: #e8eef8; } .g { background: #fdecc8; } .split { outline: 1px dashed #c33; }
table { border-collapse: collapse; font-size: 12px; } td, th { padding: 2px 5px; border: 1px solid #eee; }
td, th { white-space: nowrap; } .q { font-family: ui-monospace, monospace; white-space: pre; }
td.chosen { background: #fdecc8; font-weight: bold; } .mono { font-family: ui-monospace, monospace; }
#grid { display: grid; gap: 4px; align-items: center; }
#grid canvas { image-rendering: pixelated; border: 2px solid transparent; cursor: pointer; }
#grid canvas.on { border-color: #c33; } #big { image-rendering: pixelated; border: 1px solid #ccc; }
.scale { display: flex; align-items: center; gap: .6em; font-size: 12px; margin: .6em 0; }
.scroll { overflow: auto; max-height: 560px; } .note { color: #a50; }
pre { background: #f6f6f6; padding: 1em; white-space: pre-wrap; overflow-wrap: anywhere; }
</style></head>
<body>
<h1>{title}</h1>
<ul id="notes"></ul>
<h2>1. Tokens</h2>
<p class="hint">The model never sees letters, only these tokens: the prompt's in blue, the generated ones in
orange. Look at how words split: common words are one token, rare ones several. A dashed outline marks a
token whose bytes start or end inside a character (its text shows as \ufffd alone). Hover a token for its
id and bytes.</p>
<div id="tokens"></div>
<h2>2. Each step's top 10</h2>
<p class="hint">At every step the model gives each possible next token a probability; here are the 10 most
likely, at temperature 1 (after any penalties), as <code>--show_probs</code> shows them. The token that was
chosen is highlighted where it stands. One large probability means the model was sure; many small, similar
ones mean it was guessing.</p>
<div class="scroll"><table id="steps"></table></div>
<h2>3. Attention</h2>
<p class="hint">In each layer, each head decides how much every token looks back at every earlier token; one
small map per layer (rows) and head (columns). In a map, rows are the tokens doing the looking (queries),
columns the tokens looked at (keys), and each row's weights add up to 1. Look for heads that look at the
previous token (a line just below the diagonal) and heads that put most weight on the first token.</p>
<div class="scale"><span>attention weight:</span><canvas class="colour-scale"></canvas></div>
<div id="grid"></div>
<p>Click a map, or choose: layer <select id="layer"></select> head <select id="head"></select>.
The large view puts the tokens on its axes.</p>
<div class="scale"><span>attention weight:</span><canvas class="colour-scale"></canvas></div>
<div class="scroll"><canvas id="big"></canvas></div>
<h2>4. Logit lens</h2>
<p class="hint">For every layer and position: the most likely next token, and its probability (the redder,
the surer), if the residual stream after that layer went straight to the final layer norm and the head.
The last layer's row is the model's real prediction; look for the layer where a column settles on it.</p>
<div class="scroll"><table id="lens"></table></div>
<h2>5. The model</h2>
<p class="hint">The model's sizes, where its parameters are, and what a token costs to compute.</p>
<pre id="card"></pre>
<script id="data" type="application/json">{data}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const el = (tag, text, cls) => { const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const word = id => D.vocab[id] ?? String(id);
const pct = p => (100 * p).toPrecision(2) + "%";
async function inflate(packedArray) {
  const raw = Uint8Array.from(atob(packedArray.deflated_base64), c => c.charCodeAt(0));
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
function draw(canvas, bytes, offset, rows, cols, cell) {
  canvas.width = cols * cell; canvas.height = rows * cell;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const v = 255 - bytes[offset + i];
    img.data.set([v, v, 255 - (255 - v) / 3, 255], 4 * i);
  }
  const tmp = document.createElement("canvas"); tmp.width = cols; tmp.height = rows;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false; ctx.drawImage(tmp, 0, 0, cols * cell, rows * cell);
}
function tokens() {
  const box = document.getElementById("tokens");
  D.tokens.forEach((t, i) => {
    const span = el("span", t.text, "tok " + (i < D.n_prompt ? "p" : "g") + (t.split ? " split" : ""));
    span.title = `#${i}  id ${t.id}  bytes ${t.bytes}` + (t.split ? "  (part of a character)" : "");
    box.append(span);
  });
}
function candidate(id, text, chosen) {
  const td = el("td", undefined, chosen ? "chosen" : "");
  td.append(el("span", JSON.stringify(word(id)), "q"), " " + text);
  return td;
}
function steps() {
  const table = document.getElementById("steps"), head = el("tr");
  head.append(el("th", "step"));
  for (let k = 1; k <= 10; k++) head.append(el("th", `${k}.`));
  table.append(head);
  D.steps.forEach((s, i) => {
    const tr = el("tr"); tr.append(el("th", `${i + 1}`));
    s.top.forEach(([id, p]) => tr.append(candidate(id, pct(p), id === s.chosen)));
    if (!s.top.some(([id]) => id === s.chosen)) tr.append(candidate(s.chosen, "(chosen; not in the top 10)", true));
    table.append(tr);
  });
}
function colourScales() {  // the ramp draw() uses, with ticks where the square-root scale puts them
  document.querySelectorAll("canvas.colour-scale").forEach(canvas => {
    const width = 300, ctx = canvas.getContext("2d"); canvas.width = width + 20; canvas.height = 30;
    const ramp = new Uint8Array(width).map((_, x) => Math.round(255 * x / (width - 1)));
    const bar = el("canvas"); draw(bar, ramp, 0, 1, width, 1);
    ctx.drawImage(bar, 10, 0, width, 14);
    ctx.fillStyle = "#333"; ctx.font = "10px sans-serif"; ctx.textAlign = "center";
    [0, 0.01, 0.05, 0.2, 0.5, 1].forEach(w => {
      const x = 10 + Math.sqrt(w) * (width - 1);
      ctx.fillRect(x, 14, 1, 4); ctx.fillText(String(w), x, 28);
    });
  });
}
let ROWS, THUMBS, layer = 0, head = 0;
function grid() {
  const [L, H, S] = D.thumbnails.shape, box = document.getElementById("grid");
  const size = Math.max(40, Math.min(110, Math.floor((box.clientWidth - 64) / H) - 8));  // fill the width
  box.style.gridTemplateColumns = `4em repeat(${H}, ${size + 4}px)`;
  for (let l = 0; l < L; l++) {
    box.append(el("span", `layer ${l + 1}`));
    for (let h = 0; h < H; h++) {
      const c = el("canvas"); c.dataset.layer = l; c.dataset.head = h; c.title = `layer ${l + 1}, head ${h + 1}`;
      draw(c, THUMBS, ((l * H) + h) * S * S, S, S, 1); c.style.width = c.style.height = `${size}px`;
      c.addEventListener("click", () => select(l, h)); box.append(c);
    }
  }
  const [ls, hs] = [document.getElementById("layer"), document.getElementById("head")];
  for (let l = 0; l < L; l++) ls.append(new Option(l + 1, l));
  for (let h = 0; h < H; h++) hs.append(new Option(h + 1, h));
  ls.addEventListener("change", () => select(+ls.value, head));
  hs.addEventListener("change", () => select(layer, +hs.value));
}
function select(l, h) {
  layer = l; head = h;
  document.getElementById("layer").value = l; document.getElementById("head").value = h;
  document.querySelectorAll("#grid canvas").forEach(c =>
    c.classList.toggle("on", +c.dataset.layer === l && +c.dataset.head === h));
  const [, H, R, T] = D.rows.shape, cell = Math.max(2, Math.min(22, Math.floor(900 / T)));
  const big = document.getElementById("big"), margin = 90;
  const tmp = el("canvas"); draw(tmp, ROWS, ((l * H) + h) * R * T, R, T, cell);
  big.width = T * cell + margin; big.height = R * cell + margin;
  const ctx = big.getContext("2d"); ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, big.width, big.height);
  ctx.drawImage(tmp, margin, margin);
  ctx.fillStyle = "#333"; ctx.font = `${Math.min(12, Math.max(8, cell - 2))}px sans-serif`;
  const every = Math.ceil(10 / cell), first = D.window_start, label = i => D.tokens[first + i].text;
  for (let k = 0; k < T; k += every) {
    ctx.save(); ctx.translate(margin + k * cell + cell * 0.8, margin - 4); ctx.rotate(-Math.PI / 2);
    ctx.fillText(label(k).slice(0, 12), 0, 0); ctx.restore();
  }
  for (let q = 0; q < R; q += every)
    ctx.fillText(label(T - R + q).slice(0, 12), 2, margin + q * cell + cell * 0.8);
  big.dataset.shown = `${l},${h}`;
}
function lens() {
  const table = document.getElementById("lens"), first = D.window_start, T = D.lens_ids[0].length;
  const top = el("tr"); top.append(el("th", "layer \\\\ position"));
  for (let t = 0; t < T; t++) top.append(el("th", D.tokens[first + t].text, "mono"));
  table.append(top);
  D.lens_ids.forEach((ids, l) => {
    const tr = el("tr"); tr.append(el("th", `${l + 1}`));
    ids.forEach((id, t) => {
      const p = D.lens_probs[l][t], td = el("td", JSON.stringify(word(id)), "mono");
      td.title = pct(p); td.style.background = `rgba(200, 80, 40, ${0.08 + 0.7 * p})`; tr.append(td);
    });
    table.append(tr);
  });
}
(async () => {
  D.notes.forEach(n => document.getElementById("notes").append(el("li", n, "note")));
  document.getElementById("card").textContent = D.card;
  tokens(); steps(); lens();
  [ROWS, THUMBS] = await Promise.all([inflate(D.rows), inflate(D.thumbnails)]);
  colourScales(); grid(); select(0, 0);
  document.body.dataset.ready = "1";
})();
</script>
</body></html>
"""
