"""--score FILE --explain PATH.html: a text the user already has, read through the model's eyes, as
one self-contained HTML file (after GLTR, Strobelt, Gehrmann and Rush, 2019).

Unlike explain_page.py, which lays out what the model did while it generated, this page is about
an existing text: each token coloured by the rank the model gave it, its top 10 on hover or tap,
histograms of the ranks and the probabilities, and the perplexity. explain.scored_positions
computes the numbers with --score's own windows; the page-writing helpers (one-pass filling, safe
JSON, the checked write) are explain_page's.
"""
import html
import math

import numpy as np

import explain
from encoder import Encoder
from explain_page import embedded_json, fill, write_page


def summary(logprobs: np.ndarray, stride: int) -> dict:
    """--score's summary, computed as cli.run_score computes it."""
    nll = -math.fsum(logprobs.tolist()) / len(logprobs)  # average negative log-likelihood, nats per token
    return {"n_tokens_scored": len(logprobs), "avg_nll": nll, "perplexity": math.exp(nll), "stride": stride}


def page_data(encoder: Encoder, tokens: list[int], scored: dict, stride: int, model: str, n_vocab: int) -> dict:
    """The JSON the page's script reads. The log-probabilities are kept exactly (as --score --json
    prints them); the top 10's probabilities, shown as percentages, to 3 significant digits."""
    used = sorted(set(tokens) | set(scored["top_ids"].ravel().tolist()))
    return {
        "model": model, "n_vocab": n_vocab, "summary": summary(scored["logprobs"], stride),
        "ids": list(tokens), "logprobs": scored["logprobs"].tolist(), "ranks": scored["ranks"].tolist(),
        "top_ids": scored["top_ids"].ravel().tolist(),
        "top_probs": [float(f"{p:.3g}") for p in scored["top_probs"].ravel().tolist()],
        "vocab": {str(token): encoder.decode([token]) for token in used},
    }


def render(data: dict, title: str) -> str:
    return fill(PAGE, title=html.escape(title), data=embedded_json(data))


def score_and_write(path: str, encoder: Encoder, tokens: list[int], params: dict, n_head: int, stride: int,
                    progress: object, model: str, source: str) -> np.ndarray:
    """Score the text with its ranks and top 10s, write the page, and return the log-probabilities
    (the same numbers gpt2.token_logprobs gives)."""
    scored = explain.scored_positions(tokens, params, n_head, stride, progress=progress)
    data = page_data(encoder, tokens, scored, stride, model, params["wte"].shape[0])
    write_page(path, "--explain", render(data, f"{model} reads {source}"))
    return scored["logprobs"]


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 1.5em auto; max-width: 1000px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; overflow-wrap: anywhere; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.big { font-size: 1.3em; } .hint { color: #555; max-width: 48em; }
#text { font: 15px/1.9 ui-monospace, monospace; white-space: pre-wrap; overflow-wrap: anywhere;
  border: 1px solid #ddd; padding: .8em; border-radius: 4px; }
.tok { border-radius: 2px; cursor: pointer; } .tok:hover, .tok.on { outline: 2px solid #222; }
.b0 { background: #b8e6b0; } .b1 { background: #fbe38e; } .b2 { background: #f7b6a0; } .b3 { background: #d9c2ef; }
.none { background: #e4e4e4; } .pbar { background: #8fb3e0; }
.legend span { display: inline-block; padding: 0 .5em; margin: 0 .3em .3em 0; border-radius: 3px; }
#tip { position: absolute; display: none; background: #fff; border: 1px solid #999; border-radius: 4px;
  box-shadow: 0 2px 8px #0003; padding: .5em .7em; font-size: 13px; width: 300px; z-index: 2; }
#tip table { border-collapse: collapse; width: 100%; } #tip td { padding: 1px 4px; }
#tip .mono { font-family: ui-monospace, monospace; white-space: pre; overflow: hidden; text-overflow: ellipsis;
  max-width: 150px; } #tip tr.actual { background: #fdecc8; font-weight: bold; }
.bars { display: flex; align-items: flex-end; gap: 6px; height: 170px; margin: .5em 0 2.5em; }
.bar { flex: 1; position: relative; min-width: 0; } .bar div { width: 100%; border-radius: 3px 3px 0 0; }
.bar span { position: absolute; top: 100%; left: 0; right: 0; text-align: center; font-size: 12px; }
.bar b { display: block; text-align: center; font-size: 12px; font-weight: normal; }
</style></head>
<body>
<h1>{title}</h1>
<p class="big" id="perplexity"></p>
<p class="hint" id="how"></p>
<h2>1. The text, coloured by rank</h2>
<p class="hint">At each token the model had ranked all its possible next tokens, most likely first. The colour
says where the token that really came stood in that ranking. Text a model wrote by choosing likely tokens is
mostly green and yellow; people surprise it more often, with more red and purple. Hover over or tap a
token to see its probability, its rank and what the model expected instead.</p>
<p class="legend" id="legend"></p>
<div id="text"></div>
<div id="tip"></div>
<h2>2. How the ranks are spread</h2>
<p class="hint">How many tokens had each rank. A tall first bar means the model often guessed the next token
outright; bars on the right are tokens it found hard to predict.</p>
<div class="bars" id="rank-bars"></div>
<h2>3. How the probabilities are spread</h2>
<p class="hint">How many tokens the model gave each probability, on a scale of powers of ten. A choice
among all 50,257 tokens at random would give each about 0.002%, the second bar; the further right,
the more the model expected the token.</p>
<div class="bars" id="prob-bars"></div>
<script id="data" type="application/json">{data}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const el = (tag, text, cls) => { const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const BUCKETS = [[10, "top 10"], [100, "top 100"], [1000, "top 1,000"], [Infinity, "beyond 1,000"]];
const bucket = rank => BUCKETS.findIndex(([most]) => rank <= most);
const word = id => D.vocab[id] ?? `#${id}`;
const shown = text => text.replace(/\\n/g, "\\u23ce\\n");  // a newline token gets a visible mark
const pct = p => (100 * p).toPrecision(p >= 0.001 ? 3 : 2) + "%";
const n = D.logprobs.length, K = D.top_ids.length / n;
function summary() {
  const s = D.summary;
  document.getElementById("perplexity").textContent = `Perplexity ${s.perplexity.toFixed(2)}: on average the ` +
    `model was as unsure as if it chose among ${Math.round(s.perplexity).toLocaleString("en")} equally likely tokens.`;
  document.getElementById("how").textContent = `${D.model} scored ${s.n_tokens_scored.toLocaleString("en")} ` +
    `tokens (the first has nothing before it, so it is grey and not scored). Average negative log-likelihood ` +
    `${s.avg_nll.toFixed(4)} nats per token; the perplexity is its exponential. Past the model's context, the ` +
    `windows move ${s.stride} tokens at a time, as --score's do.`;
  const counts = [0, 0, 0, 0]; D.ranks.forEach(r => counts[bucket(r)]++);
  const legend = document.getElementById("legend");
  BUCKETS.forEach(([, name], b) => legend.append(el("span", `${name}: ${counts[b].toLocaleString("en")} ` +
    `(${(100 * counts[b] / n).toFixed(0)}%)`, "b" + b)));
  legend.append(el("span", "not scored", "none"));
}
function text() {
  const box = document.getElementById("text");
  D.ids.forEach((id, i) => {
    const span = el("span", shown(word(id)), "tok " + (i ? "b" + bucket(D.ranks[i - 1]) : "none"));
    span.dataset.i = i; box.append(span);
  });
  const show = event => { const span = event.target.closest(".tok"); if (span) tip(span); };
  box.addEventListener("mouseover", show); box.addEventListener("click", show);
}
function tip(span) {
  const i = +span.dataset.i, box = document.getElementById("tip");
  document.querySelectorAll(".tok.on").forEach(s => s.classList.remove("on")); span.classList.add("on");
  box.replaceChildren();
  const head = el("div"); head.append(el("b", JSON.stringify(word(D.ids[i]))));
  if (i === 0) { head.append(el("span", ": the first token, with no context, is not scored")); box.append(head); }
  else {
    const p = Math.exp(D.logprobs[i - 1]), rank = D.ranks[i - 1];
    head.append(el("span", `  probability ${pct(p)}, rank ${rank.toLocaleString("en")} of ` +
      `${D.n_vocab.toLocaleString("en")}`)); box.append(head, el("div", "the model's top 10 here:"));
    const table = el("table");
    for (let k = 0; k < K; k++) {
      const id = D.top_ids[(i - 1) * K + k], tr = el("tr", undefined, id === D.ids[i] ? "actual" : "");
      tr.append(el("td", `${k + 1}`), el("td", JSON.stringify(word(id)), "mono"),
        el("td", pct(D.top_probs[(i - 1) * K + k])));
      table.append(tr);
    }
    box.append(table);
  }
  box.style.display = "block";
  const r = span.getBoundingClientRect(), width = box.offsetWidth;
  box.style.left = `${Math.max(4, Math.min(r.left, document.documentElement.clientWidth - width - 4)) + scrollX}px`;
  box.style.top = `${r.bottom + scrollY + 4}px`;
}
function bars(id, labels, counts, classes) {
  const box = document.getElementById(id), most = Math.max(1, ...counts);
  labels.forEach((label, b) => {
    const bar = el("div", undefined, "bar"), fill = el("div", undefined, classes[b]);
    fill.style.height = `${130 * counts[b] / most}px`; bar.title = `${label}: ${counts[b]} tokens`;
    bar.append(el("b", counts[b].toLocaleString("en")), fill, el("span", label)); box.append(bar);
  });
}
function histograms() {
  const rankEdges = [1, 10, 100, 1000, 10000, Infinity];
  const rankLabels = ["1", "2\\u201310", "11\\u2013100", "101\\u20131,000", "1,001\\u201310,000", "> 10,000"];
  const ranks = rankEdges.map(() => 0); D.ranks.forEach(r => ranks[rankEdges.findIndex(e => r <= e)]++);
  bars("rank-bars", rankLabels, ranks, ["b0", "b0", "b1", "b2", "b3", "b3"]);
  const probLabels = ["< 0.001%", "0.001\\u20130.01%", "0.01\\u20130.1%", "0.1\\u20131%", "1\\u201310%",
    "10\\u2013100%"];
  const probs = probLabels.map(() => 0);
  D.logprobs.forEach(lp => probs[Math.max(0, Math.min(5, Math.floor(lp / Math.LN10) + 6))]++);
  bars("prob-bars", probLabels, probs, probLabels.map(() => "pbar"));
}
summary(); text(); histograms();
document.body.dataset.ready = "1";
</script>
</body></html>
"""
