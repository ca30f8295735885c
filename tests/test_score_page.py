"""--score FILE --explain PATH.html: the text coloured by rank, GLTR-style.

Its numbers are the ones `--score --json` prints (the same windows and float32 arithmetic, so
equal, not close); ranks and top 10s are checked against the model's own logits; the page is
opened in Chromium."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import browser_page
import explain
import gpt2
import reference
import score_page
from conftest import REPO_DIR, load_fixture
from encoder import get_encoder

browser = browser_page.browser  # the fixture
ENV = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")
HOSTILE = "</script><script>window.pwned = 1</script> {data} {title} <!-- \"'` <img src=x onerror=window.pwned=1>"


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)],
                          capture_output=True, env=ENV, timeout=120, input=stdin)


def embedded_data(path):
    page = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1])


@pytest.fixture(scope="module")
def scored_page(tmp_path_factory):
    """tiny-a (a context of 32) on a text of several windows, with markup in the file's name and text."""
    folder = tmp_path_factory.mktemp("score") / "<img src=x onerror=window.pwned=1>{data}"
    folder.mkdir()
    text = folder / "text.txt"
    text.write_text(reference.SCORE_TEXT + HOSTILE, encoding="utf-8")
    path = folder.parent / "page.html"
    result = run_cli("--score", text, "--model", reference.fixture_dir("tiny-a"), "--stride", 12, "--explain", path)
    assert result.returncode == 0, result.stderr.decode()
    return text, path


def test_the_pages_numbers_are_score_jsons_numbers(scored_page):
    text, path = scored_page
    result = run_cli("--score", text, "--model", reference.fixture_dir("tiny-a"), "--stride", 12, "--json")
    printed, data = json.loads(result.stdout), embedded_data(path)
    assert [t["token"] for t in printed["tokens"]] == data["ids"][1:]
    assert [t["logprob"] for t in printed["tokens"]] == data["logprobs"]
    assert {key: printed[key] for key in data["summary"]} == data["summary"]
    assert printed["n_tokens_scored"] > 4 * 32, "the text spans several windows"


def test_scored_positions_equal_token_logprobs_bit_for_bit():
    hparams, params = load_fixture("tiny-a")
    tokens = get_encoder("tiny-a", reference.FIXTURES_DIR).encode(reference.SCORE_TEXT)
    for stride in (5, 16, 31):
        scored = explain.scored_positions(tokens, params, hparams["n_head"], stride)
        assert np.array_equal(scored["logprobs"], gpt2.token_logprobs(tokens, params, hparams["n_head"], stride))


def test_ranks_and_top_10s_are_those_of_the_models_logits():
    """One window (a text shorter than the context), so every position sees all the tokens before it,
    as gpt2.gpt2's logits do. Probabilities: float32 softmax of the same logits, within 1e-6."""
    hparams, params = load_fixture("tiny-b")
    tokens = reference.reference_tokens(hparams["n_vocab"], 50, seed=2)
    scored = explain.scored_positions(tokens, params, hparams["n_head"], stride=32)
    logits = gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])[:-1]  # [49, n_vocab]: row i predicts token i + 1
    target = logits[np.arange(49), tokens[1:]]
    assert scored["ranks"].tolist() == (1 + (logits > target[:, None]).sum(axis=-1)).tolist()
    assert scored["top_ids"].tolist() == np.argsort(-logits, axis=-1, kind="stable")[:, :10].tolist()
    probs = gpt2.softmax(logits)
    assert np.abs(scored["top_probs"] - np.sort(probs, axis=-1)[:, ::-1][:, :10]).max() <= 1e-6


def test_standard_input_works_too(tmp_path):
    path = tmp_path / "page.html"
    result = run_cli("--score", "-", "--model", reference.fixture_dir("tiny-a"), "--explain", path,
                     stdin=reference.SHORT_SCORE_TEXT.encode())
    assert result.returncode == 0 and "wrote" in result.stderr.decode(), result.stderr.decode()
    assert "perplexity" in result.stdout.decode()
    assert embedded_data(path)["summary"]["n_tokens_scored"] == len(embedded_data(path)["ids"]) - 1


def test_a_5000_token_page_stays_near_one_megabyte(tmp_path):
    """The size the README states: 5,201 tokens, 205 bytes a token, most of it the top 10s."""
    hparams, params = load_fixture("tiny-b")
    encoder = get_encoder("tiny-b", reference.FIXTURES_DIR)
    tokens = reference.reference_tokens(hparams["n_vocab"], 5201, seed=4)
    path = tmp_path / "page.html"
    score_page.score_and_write(str(path), encoder, tokens, params, hparams["n_head"], 32, None, "tiny-b", "text")
    size = path.stat().st_size
    print(f"5,201 tokens: {size:,} bytes")
    assert size <= 1_300_000


def test_the_page_opens_in_chromium_and_hovering_shows_the_top_10(browser, scored_page, tmp_path):
    _, path = scored_page
    opened = browser_page.OpenedPage(browser, path, width=1280)
    page, data = opened.page, embedded_data(path)
    assert page.locator("#text .tok").count() == len(data["ids"])
    page.hover("#text .tok[data-i='7']")
    tip = page.locator("#tip")
    assert tip.is_visible() and tip.locator("tr").count() == 10
    rank = data["ranks"][6]
    assert f"rank {rank:,} of 50,257" in tip.inner_text()
    shown_top = tip.locator("td.mono").all_inner_texts()
    assert shown_top == [json.dumps(data["vocab"][str(i)], ensure_ascii=False) for i in data["top_ids"][60:70]]
    assert page.locator("#rank-bars .bar").count() == 6 and page.locator("#prob-bars .bar").count() == 6
    assert "Perplexity" in page.inner_text("#perplexity")
    assert page.evaluate("() => window.pwned") is None and page.locator("img").count() == 0
    assert HOSTILE in page.inner_text("#text").replace("\u23ce", "")
    opened.assert_nothing_overflows(tmp_path / "score-page.png")  # with the top 10 shown, too
    opened.assert_quiet()
    page.close()
