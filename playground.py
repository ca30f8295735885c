"""The server's playground at `/`: one self-contained page (no CDN, nothing fetched but its own
server's API) that streams a continuation and colours every token by its probability, as OpenAI's
Playground did. Hovering or tapping a token shows its top 5 alternatives; clicking one continues
the text from there. Stop cancels the request (the server frees its row at the next step).
"""
import json


def page(model_id: str) -> str:
    # the one value filled in: JSON with every "<" escaped, so no text can end the script or start a tag
    config = json.dumps({"model": model_id}).replace("<", "\\u003c")
    return PAGE.replace("/*CONFIG*/null", config, 1)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>GPT-2 playground</title>
<link rel="icon" href="data:,">
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 1.5em auto; max-width: 900px; padding: 0 1em; color: #222; }
textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .5em; }
.controls { display: flex; flex-wrap: wrap; gap: .8em 1.4em; margin: .8em 0; align-items: end; }
.controls label { display: flex; flex-direction: column; font-size: 13px; color: #555; }
.controls input { width: 7em; font: inherit; }
button { font: inherit; padding: .3em 1.2em; }
#output { white-space: pre-wrap; border: 1px solid #ddd; border-radius: 4px; padding: .8em; min-height: 6em;
  margin-top: .8em; word-break: break-word; }
#output .prompt { color: #666; }
#output .tok { border-radius: 2px; cursor: pointer; }
#tip { position: absolute; background: #fff; border: 1px solid #aaa; border-radius: 4px; padding: .4em .6em;
  box-shadow: 0 2px 8px #0003; font-size: 13px; display: none; z-index: 2; }
#tip .alt { display: flex; justify-content: space-between; gap: 1.5em; cursor: pointer; padding: 0 .2em; }
#tip .alt:hover { background: #eef; }
#status { color: #777; font-size: 13px; margin-left: .5em; }
.legend span { padding: 0 .4em; border-radius: 2px; font-size: 12px; }
</style></head><body>
<h1>GPT-2 playground</h1>
<p>Write a beginning and let <b id="model"></b> continue it. Each new token is coloured by the probability the
model gave it (<span class="legend"><span style="background:hsl(0,75%,82%)">unlikely</span>
<span style="background:hsl(60,75%,82%)">even</span> <span style="background:hsl(120,75%,82%)">likely</span></span>);
hover over or tap a token to see the alternatives, and click one to go on from there.</p>
<textarea id="prompt" rows="4">Alan Turing theorized that computers would one day become</textarea>
<div class="controls">
<label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.8"></label>
<label>top_p <input id="top_p" type="number" min="0" max="1" step="0.05" value="1"></label>
<label>max_tokens <input id="max_tokens" type="number" min="1" max="1024" step="1" value="40"></label>
<label>stop (one per line) <textarea id="stop" rows="1" style="width:10em"></textarea></label>
<label>API key (if the server has one) <input id="key" type="password" style="width:10em"></label>
<div><button id="generate">Generate</button> <button id="stop_button" disabled>Stop</button>
<span id="status"></span></div>
</div>
<div id="output"></div>
<div id="tip"></div>
<script>
"use strict";
const CONFIG = /*CONFIG*/null;
const $ = (id) => document.getElementById(id);
$("model").textContent = CONFIG.model;
let controller = null;

function colour(p) { return "hsl(" + Math.round(120 * p) + ",75%,82%)"; }
function shown(token) { return token.startsWith("bytes:") ? "\\u2026" + token.slice(6) : JSON.stringify(token); }

function setRunning(running) {
  $("generate").disabled = running;
  $("stop_button").disabled = !running;
}

function addToken(text, info) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  span.style.background = colour(Math.exp(info.logprob));
  span.dataset.info = JSON.stringify(info);
  $("output").appendChild(span);
}

function showTip(span) {
  const info = JSON.parse(span.dataset.info);
  const tip = $("tip");
  tip.replaceChildren();
  const head = document.createElement("div");
  head.textContent = shown(info.token) + ": " + (100 * Math.exp(info.logprob)).toFixed(1) + "%";
  head.style.fontWeight = "bold";
  tip.appendChild(head);
  for (const [token, logprob] of info.top) {
    const row = document.createElement("div");
    row.className = "alt";
    const name = document.createElement("span");
    name.textContent = shown(token);
    const percent = document.createElement("span");
    percent.textContent = (100 * Math.exp(logprob)).toFixed(1) + "%";
    row.append(name, percent);
    row.addEventListener("click", () => continueWith(span, token));
    tip.appendChild(row);
  }
  const box = span.getBoundingClientRect();
  tip.style.left = (window.scrollX + box.left) + "px";
  tip.style.top = (window.scrollY + box.bottom + 4) + "px";
  tip.style.display = "block";
}

function continueWith(span, token) {
  if (token.startsWith("bytes:")) return;  // not a whole character: nothing to write down
  let text = "";
  for (const node of $("output").childNodes) {
    if (node === span) break;
    text += node.textContent;
  }
  $("prompt").value = text + token;
  $("tip").style.display = "none";
  generate();
}

async function generate() {
  if (controller) controller.abort();
  controller = new AbortController();
  const output = $("output");
  output.replaceChildren();
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = $("prompt").value;
  output.appendChild(prompt);
  const stops = $("stop").value.split("\\n").filter((s) => s.length > 0).slice(0, 4);
  const body = {model: CONFIG.model, prompt: $("prompt").value, stream: true, logprobs: 5,
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value)};
  if (stops.length) body.stop = stops;
  const headers = {"Content-Type": "application/json"};
  if ($("key").value) headers.Authorization = "Bearer " + $("key").value;
  setRunning(true);
  $("status").textContent = "generating\\u2026";
  let waiting = null;  // a token whose text is not settled yet (part of a character, or of a possible stop text)
  try {
    const response = await fetch("/v1/completions", {method: "POST", headers, body: JSON.stringify(body),
      signal: controller.signal});
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.error ? error.error.message : response.statusText);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/^data: /, "");
        buffer = buffer.slice(end + 2);
        if (line === "[DONE]") continue;
        const choice = JSON.parse(line).choices[0];
        const lp = choice.logprobs;
        if (lp && lp.tokens.length) {
          const info = {token: lp.tokens[0], logprob: lp.token_logprobs[0], top: Object.entries(lp.top_logprobs[0])};
          if (waiting && waiting.logprob < info.logprob) info.logprob = waiting.logprob;
          waiting = info;
        }
        if (choice.text && waiting) {
          addToken(choice.text, waiting);
          waiting = null;
        } else if (choice.text) {
          output.appendChild(document.createTextNode(choice.text));
        }
        if (choice.finish_reason) $("status").textContent = "finished: " + choice.finish_reason;
      }
    }
  } catch (error) {
    $("status").textContent = error.name === "AbortError" ? "stopped" : "error: " + error.message;
  } finally {
    setRunning(false);
    controller = null;
  }
}

$("generate").addEventListener("click", generate);
$("stop_button").addEventListener("click", () => { if (controller) controller.abort(); });
$("output").addEventListener("mouseover", (e) => { if (e.target.classList.contains("tok")) showTip(e.target); });
$("output").addEventListener("click", (e) => { if (e.target.classList.contains("tok")) showTip(e.target); });
document.addEventListener("click", (e) => {
  if (!$("tip").contains(e.target) && !e.target.classList.contains("tok")) $("tip").style.display = "none";
});
</script>
</body></html>
"""
