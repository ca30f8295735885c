"""Looking inside: the model card (--info), the HTML report (--explain) and --timing.

The report's numbers are checked against direct recomputations from the model's own functions;
the page itself is opened in a real headless Chromium (Debian's package, driven by Playwright).
"""
import base64
import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

import browser_page
import explain
import gpt2
import model_card
import reference
import utils
from conftest import REPO_DIR, load_fixture, symlinked_models_dir
from encoder import get_encoder

browser = browser_page.browser  # the fixture
ENV = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-b"})


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)],
                          capture_output=True, env=ENV, timeout=120)


def all_arrays(tree):
    if isinstance(tree, np.ndarray):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return [array for item in items for array in all_arrays(item)]


# ---------------------------------------------------------------- the model card


@pytest.mark.parametrize("name", ["tiny-a", "tiny-b", "hf-a", "hf-b"])
def test_card_counts_add_up_to_the_arrays_sizes(name):
    _, hparams, params = utils.load_model(reference.fixture_dir(name))
    card = model_card.model_card(hparams, params)
    assert card["total"] == sum(array.size for array in all_arrays(params))
    assert sum(card["components"].values()) == card["total"]
    n_vocab, n_embd = params["wte"].shape
    assert card["total_untied"] == card["total"] + (n_vocab * n_embd if "lm_head" not in params else 0)
    assert card["weight_bytes"] == 4 * card["total"]
    assert card["kv_cache_bytes_per_token"] == 2 * hparams["n_layer"] * n_embd * 4


def test_card_of_the_124m_shapes_is_124439808_tied_and_163037184_untied():
    """OpenAI's 124M shapes, as arrays that take no memory (broadcast views of one zero)."""
    hparams = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
    tensors = {name: np.broadcast_to(np.float32(0), shape) for name, shape in utils.checkpoint_shapes(hparams).items()}
    card = model_card.model_card(hparams, utils.params_from_tensors(tensors, hparams))
    assert (card["total"], card["total_untied"]) == (124_439_808, 163_037_184)
    text = model_card.format_card(card, "124M")
    assert "124,439,808" in text and "163,037,184" in text


def test_info_prints_the_card_and_generates_nothing(models_dir):
    result = run_cli("--info", "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    hparams, params = load_fixture("tiny-b")
    assert f"{sum(a.size for a in all_arrays(params)):,}" in text and "n_layer 3" in text
    assert "key/value cache per token" in text


# ---------------------------------------------------------------- what the report shows


class KeepingTrace(explain.Trace):
    """A Trace that also keeps the residual stream after each block, for the recomputations."""

    def __init__(self, params, n_rows):
        super().__init__(params, n_rows)
        self.streams = []

    def residual(self, x):
        super().residual(x)
        self.streams.append(x.copy())


@pytest.fixture(scope="module")
def traced():
    hparams, params = load_fixture("tiny-b")
    tokens = reference.reference_tokens(hparams["n_vocab"], 40, seed=8)
    trace = KeepingTrace(params, n_rows=40)
    gpt2.transformer(tokens, **params, n_head=hparams["n_head"], batch=gpt2.Batch([len(tokens)], trace=trace))
    return hparams, params, tokens, trace


def test_attention_rows_sum_to_one_and_never_look_ahead(traced):
    """Float32 sums of up to 40 weights: within 1e-5 of 1. Future positions get exactly 0."""
    _, _, tokens, trace = traced
    for layer in trace.rows:  # [H, T, T]
        assert np.abs(layer.sum(axis=-1) - 1).max() <= 1e-5
        assert not np.triu(layer, k=1).any()


def test_attention_rows_equal_a_direct_recomputation_from_q_and_k(traced):
    """softmax(q k^T / sqrt(head_dim) + causal mask), in float64 from the stream entering each block:
    within 1e-5 of what the forward pass recorded."""
    hparams, params, tokens, trace = traced
    n_head, n = hparams["n_head"], len(tokens)
    streams = [params["wte"][tokens] + params["wpe"][:n]] + trace.streams[:-1]
    for block, x, recorded in zip(params["blocks"], streams, trace.rows):
        qkv = gpt2.linear(gpt2.layer_norm(x, **block["ln_1"]), **block["attn"]["c_attn"]).astype(np.float64)
        q, k, _ = (part.reshape(n, n_head, -1).transpose(1, 0, 2) for part in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + np.triu(np.full((n, n), -np.inf), k=1)
        expected = np.exp(scores - scores.max(axis=-1, keepdims=True))
        expected /= expected.sum(axis=-1, keepdims=True)
        assert np.abs(recorded - expected).max() <= 1e-5


def test_the_last_layers_logit_lens_is_the_models_own_prediction(traced):
    hparams, params, tokens, trace = traced
    logits = gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])
    assert trace.lens_ids[-1].tolist() == logits.argmax(axis=-1).tolist()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    assert np.allclose(trace.lens_probs[-1], probs.max(-1) / probs.sum(-1), atol=1e-6)
    assert trace.lens_ids[0].tolist() != trace.lens_ids[-1].tolist(), "earlier layers should predict otherwise"


def test_thumbnails_are_block_means_of_the_weights():
    weights = np.random.default_rng(0).random((2, 10, 10)).astype(np.float32)
    thumbs = explain.block_means(weights, 4)  # blocks of rows/columns 0-1, 2-4, 5-6, 7-9
    assert thumbs.shape == (2, 4, 4)
    assert np.isclose(thumbs[1, 1, 3], weights[1, 2:5, 7:10].mean())


def test_tokens_that_split_a_character_are_marked():
    encoder = get_encoder("tiny-b", reference.FIXTURES_DIR)
    tokens = encoder.encode("ok 😀!")
    pieces = explain.token_pieces(encoder, tokens)
    assert [p["split"] for p in pieces] == [False] + [True] * (len(tokens) - 2) + [False]
    assert pieces[0] == {"id": tokens[0], "text": "ok", "bytes": "6f 6b", "split": False}


def test_attention_bytes_come_back_within_their_rounding():
    weights = np.random.default_rng(1).random(1000).astype(np.float32) ** 4
    back = explain.from_bytes(explain.as_bytes(weights))
    assert np.abs(np.sqrt(back) - np.sqrt(weights)).max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------- the report from the command line


@pytest.fixture(scope="module")
def report(models_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    result = run_cli("Once upon a time 😀", "--models_dir", models_dir, "--n_tokens_to_generate", 12,
                     "--explain", path, "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    return path, result


def embedded_data(path):
    page = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1])


def unpack(packed):
    raw = zlib.decompress(base64.b64decode(packed["deflated_base64"]))
    return np.frombuffer(raw, dtype=np.uint8).reshape(packed["shape"])


def test_the_report_holds_the_same_text_as_stdout_and_the_models_attention(report, models_dir):
    path, result = report
    data = embedded_data(path)
    encoder = get_encoder("tiny-b", reference.FIXTURES_DIR)
    generated = [t["id"] for t in data["tokens"][data["n_prompt"]:]]
    assert encoder.decode(generated).encode("utf-8") == result.stdout
    assert len(data["steps"]) == 12 and all(len(step["top"]) == 10 for step in data["steps"])
    _, params = load_fixture("tiny-b")
    trace = explain.traced_pass([t["id"] for t in data["tokens"]], params, 4)
    stored = explain.from_bytes(unpack(data["rows"]))
    assert np.abs(np.sqrt(stored) - np.sqrt(np.stack(trace.rows))).max() <= 0.5 / 255 + 1e-6


def test_the_report_needs_no_network(report):
    page = report[0].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page


def test_a_report_of_a_full_context_stays_small_and_says_what_it_left_out(monkeypatch):
    """A 1,024-token run at 124M shapes keeps the last 162 query rows; here the same rule on tiny-b
    (a budget of 4,000 weights for 3 layers x 4 heads x 64 positions keeps 5 rows)."""
    monkeypatch.setattr(explain, "MAX_ATTENTION_CELLS", 4000)
    hparams, params = load_fixture("tiny-b")
    encoder = get_encoder("tiny-b", reference.FIXTURES_DIR)
    tokens = reference.reference_tokens(hparams["n_vocab"], 70, seed=3)
    data = explain.explain_data(encoder, hparams, params, tokens[:60], tokens[60:], [[(1, 0.1)]] * 10, "card")
    assert data["attention_rows"].shape == (3, 4, 5, 64)
    assert data["window_start"] == 6
    assert any("last 64" in note for note in data["notes"]) and any("last 5 of 64" in note for note in data["notes"])


@pytest.mark.parametrize("args, message", [
    (["--prompts_file", "p.txt", "--explain", "r.html"], "--explain goes with a single prompt"),
    (["--info", "--explain", "r.html"], "--explain goes with a single prompt or --score"),
    (["--score", "t.txt", "--timing"], "--timing goes with a single prompt"),
    (["hi", "--info"], "exactly one of"),
])
def test_explain_or_timing_with_another_mode_is_a_one_line_error(args, message):
    result = run_cli(*args)
    stderr = result.stderr.decode()
    assert result.returncode == 2 and stderr.count("\n") == 1 and message in stderr, stderr


def test_an_unwritable_report_path_is_a_one_line_error_before_any_work(models_dir, tmp_path):
    result = run_cli("hello", "--models_dir", tmp_path / "no-such-models", "--explain", tmp_path / "missing" / "r.html")
    stderr = result.stderr.decode()
    assert result.returncode == 1 and stderr.count("\n") == 1 and "--explain" in stderr, stderr
    assert "no-such-models" not in stderr, "the path is checked before the model is even looked for"


def test_timing_reports_load_prompt_pass_decode_and_bandwidth_on_stderr(models_dir):
    plain = run_cli("Hello there", "--models_dir", models_dir, "--n_tokens_to_generate", 8, "--ignore_eos")
    timed = run_cli("Hello there", "--models_dir", models_dir, "--n_tokens_to_generate", 8, "--ignore_eos", "--timing")
    assert timed.returncode == 0 and timed.stdout == plain.stdout
    lines = timed.stderr.decode().splitlines()
    hparams, params = load_fixture("tiny-b")
    read = model_card.model_card(hparams, params)["bytes_read_per_token"] / 2**20
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == [
        "loading the model", "prompt pass", "decode", f"each decode step reads {read:.1f} MiB of weights"]
    assert "ms/token" in lines[2] and "GB/s" in lines[3]


# ---------------------------------------------------------------- in a real browser


def test_the_report_opens_in_chromium_without_errors_or_requests_and_its_large_view_follows_the_choice(
        browser, report):
    opened = browser_page.OpenedPage(browser, report[0])
    page = opened.page
    big = lambda: page.eval_on_selector("#big", "canvas => canvas.toDataURL()")
    first = big()
    page.select_option("#layer", index=2)  # the third layer
    page.select_option("#head", index=3)
    assert page.eval_on_selector("#big", "canvas => canvas.dataset.shown") == "2,3"
    assert big() != first, "choosing another layer and head should redraw the large view"
    page.click("#grid canvas[data-layer='0'][data-head='1']")
    assert page.eval_on_selector("#big", "canvas => canvas.dataset.shown") == "0,1"
    assert page.locator("#grid canvas").count() == 3 * 4
    assert page.locator("#lens tr").count() == 1 + 3
    assert page.locator("canvas.colour-scale").count() == 2, "the grid and the large view each have a scale"
    assert min(page.locator("#grid canvas").evaluate_all("cs => cs.map(c => c.clientWidth)")) >= 40
    opened.assert_quiet()
    page.close()


def test_each_steps_row_shows_the_chosen_token_once_where_it_ranks_and_no_token_wraps(browser, report):
    opened = browser_page.OpenedPage(browser, report[0])
    page, data = opened.page, embedded_data(report[0])
    rows = page.locator("#steps tr")
    assert rows.count() == 1 + len(data["steps"])
    for i, step in enumerate(data["steps"]):
        cells = rows.nth(1 + i).locator("td")
        chosen = [k for k, (token, _) in enumerate(step["top"]) if token == step["chosen"]]
        assert cells.count() == 10 + (not chosen), "the top 10, and the chosen token only if it is not among them"
        assert rows.nth(1 + i).locator("td.chosen").count() == 1
        if chosen:
            assert cells.nth(chosen[0]).get_attribute("class") == "chosen"
    lines = page.locator("#steps .q, #lens td").evaluate_all("es => es.map(e => e.getClientRects().length)")
    assert set(lines) == {1}, "a quoted token is one box: it never wraps"
    opened.assert_quiet()
    page.close()


def test_the_report_fits_1280_pixels_with_nothing_overflowing(browser, models_dir, tmp_path):
    """A long prompt and a long model card; wide tables scroll inside their own boxes."""
    path = tmp_path / "wide.html"
    prompt = "A long prompt with many words, quoted ones \"like these\" and longer ones, " * 3
    result = run_cli(prompt, "--models_dir", models_dir, "--n_tokens_to_generate", 10, "--explain", path,
                     "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    opened = browser_page.OpenedPage(browser, path, width=1280)
    opened.assert_nothing_overflows(tmp_path / "report.png")
    opened.assert_quiet()
    opened.page.close()
