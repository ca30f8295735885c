"""Scoring a text: average negative log-likelihood and perplexity, with a sliding window.

Tolerance: 1e-4 relative against transformers (float64). Our per-token log-probabilities are
float32 (about 1e-6 relative each) and averaging only shrinks that error.
"""
import json
import math

import numpy as np
import pytest

import gpt2
import reference
from conftest import load_fixture, run_gpt2, symlinked_models_dir
from encoder import get_encoder

RTOL = 1e-4


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("tiny-a", reference.FIXTURES_DIR)


def stored(key):
    with np.load(reference.REFERENCE_FILE) as data:
        return float(data[key])


def average_nll(fixture, tokens, stride):
    hparams, params = load_fixture(fixture)
    logprobs = gpt2.token_logprobs(tokens, params, hparams["n_head"], stride)
    assert logprobs.dtype == np.float32 and logprobs.shape == (len(tokens) - 1,)
    return -math.fsum(logprobs.tolist()) / len(logprobs)


@pytest.mark.parametrize("stride", ["half", 5])
def test_windowed_nll_matches_stored_transformers_reference(fixture_name, encoder, stride):
    n_ctx = reference.read_hparams(reference.fixture_dir(fixture_name))["n_ctx"]
    stride = n_ctx // 2 if stride == "half" else stride
    tokens = encoder.encode(reference.SCORE_TEXT)
    assert len(tokens) > 2 * n_ctx, "the text must span several windows (at least 4 at stride n_ctx // 2)"
    expected = stored(f"{fixture_name}/score_nll_stride{stride}")
    assert average_nll(fixture_name, tokens, stride) == pytest.approx(expected, rel=RTOL)


def test_short_text_nll_matches_transformers_own_loss(fixture_name, encoder):
    tokens = encoder.encode(reference.SHORT_SCORE_TEXT)
    expected = stored(f"{fixture_name}/score_nll_short")
    assert average_nll(fixture_name, tokens, 16) == pytest.approx(expected, rel=RTOL)


def test_head_in_small_chunks_equals_the_head_in_one_chunk():
    """The head runs rows_at_once rows at a time; every fixture window fits one default chunk of
    256 rows, so small chunks (including a last, partial one) are what exercise the slicing.
    Same float32 arithmetic row by row, so the results agree to round-off (1e-6)."""
    hparams, params = load_fixture("tiny-b")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, hparams["n_embd"]), dtype=np.float32)
    targets = rng.integers(0, hparams["n_vocab"], 23)
    whole = gpt2.target_logprobs(x, params["wte"], targets, rows_at_once=1000)
    for rows_at_once in (1, 5, 22):
        chunked = gpt2.target_logprobs(x, params["wte"], targets, rows_at_once)
        assert np.abs(chunked - whole).max() <= 1e-6, f"rows_at_once={rows_at_once}: {chunked[:5]} vs {whole[:5]}"


@pytest.mark.parametrize("rows_at_once", [256, 5])
def test_windowing_equals_the_definition_token_by_token(encoder, rows_at_once):
    """Token i is scored once, by the first window that contains it (windows start every stride
    tokens and hold n_ctx), with that window's tokens before it as context. With rows_at_once 5
    each window's head runs in several chunks, as GPT-2's 1,024-token windows do at 256."""
    hparams, params = load_fixture("tiny-a")
    n_ctx, stride = hparams["n_ctx"], 12
    tokens = encoder.encode(reference.SCORE_TEXT)
    ours = gpt2.token_logprobs(tokens, params, hparams["n_head"], stride, rows_at_once)
    with pytest.raises(ValueError, match="windows overlap"):
        gpt2.token_logprobs(tokens, params, hparams["n_head"], n_ctx)
    for i in range(1, len(tokens)):
        window_start = next(b for b in range(0, len(tokens), stride) if i < b + n_ctx)
        logits = gpt2.gpt2(tokens[window_start:i], **params, n_head=hparams["n_head"])[-1].astype(np.float64)
        expected = logits[tokens[i]] - (np.log(np.sum(np.exp(logits - logits.max()))) + logits.max())
        assert ours[i - 1] == pytest.approx(expected, abs=1e-4), i


def test_windowed_nll_matches_live_transformers(fixture_name, encoder):
    pytest.importorskip("torch", reason="the live comparison needs torch==2.13.0 and transformers")
    pytest.importorskip("transformers", reason="the live comparison needs transformers")
    import utils

    hparams = reference.read_hparams(reference.fixture_dir(fixture_name))
    model = reference.hf_model(hparams, utils.map_checkpoint_tensors(reference.fixture_dir(fixture_name), hparams))
    tokens = encoder.encode(reference.SCORE_TEXT)
    for stride in (3, 7, hparams["n_ctx"] - 1):  # many small steps, an odd step, the largest step
        expected = reference.hf_window_nll(model, tokens, hparams["n_ctx"], stride)
        assert average_nll(fixture_name, tokens, stride) == pytest.approx(expected, rel=RTOL), stride


# ---- the command line


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """124M is tiny-a (n_head 2, n_layer 2); 355M is tiny-b (n_head 4, n_layer 3)."""
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-a", "355M": "tiny-b"})


def test_score_prints_nll_and_perplexity(models_dir, encoder, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(reference.SCORE_TEXT, encoding="utf-8")
    result = run_gpt2("--score", text_file, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    n_scored = len(encoder.encode(reference.SCORE_TEXT)) - 1
    assert lines[0] == f"tokens scored: {n_scored} (the first token has no context)"
    nll = stored("tiny-a/score_nll_stride16")  # the default stride is n_ctx // 2 = 16
    assert lines[1].startswith("average negative log-likelihood: ") and lines[1].endswith(" nats/token")
    assert float(lines[1].split()[-2]) == pytest.approx(nll, rel=RTOL)
    assert lines[2].startswith("perplexity: ")
    # exp turns an absolute error into a relative one
    assert float(lines[2].split()[-1]) == pytest.approx(math.exp(nll), rel=RTOL * nll)


def test_score_on_a_model_whose_n_head_differs_from_n_layer_matches_transformers(models_dir, tmp_path):
    """tiny-b has 4 heads and 3 layers: passing one hyperparameter for the other cannot go unseen."""
    text_file = tmp_path / "text.txt"
    text_file.write_text(reference.SCORE_TEXT, encoding="utf-8")
    result = run_gpt2("--score", text_file, "--models_dir", models_dir, "--model_size", "355M", "--json")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["stride"] == 32  # tiny-b's n_ctx // 2
    assert report["avg_nll"] == pytest.approx(stored("tiny-b/score_nll_stride32"), rel=RTOL)


def test_score_json_lists_every_tokens_log_probability(models_dir, encoder, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(reference.SCORE_TEXT, encoding="utf-8")
    result = run_gpt2("--score", text_file, "--models_dir", models_dir, "--json", "--stride", 5)
    report = json.loads(result.stdout)
    tokens = encoder.encode(reference.SCORE_TEXT)
    assert [t["token"] for t in report["tokens"]] == tokens[1:]
    assert [t["text"] for t in report["tokens"]] == [encoder.decode([t]) for t in tokens[1:]]
    assert -sum(t["logprob"] for t in report["tokens"]) / len(tokens[1:]) == pytest.approx(report["avg_nll"], rel=1e-6)
    assert report["avg_nll"] == pytest.approx(stored("tiny-a/score_nll_stride5"), rel=RTOL)
    assert report["perplexity"] == pytest.approx(math.exp(report["avg_nll"]))


def test_score_reads_standard_input_for_dash(models_dir, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(reference.SCORE_TEXT, encoding="utf-8")
    from_file = run_gpt2("--score", text_file, "--models_dir", models_dir)
    from_stdin = run_gpt2("--score", "-", "--models_dir", models_dir, stdin=reference.SCORE_TEXT.encode("utf-8"))
    assert from_stdin.returncode == 0 and from_stdin.stdout == from_file.stdout


@pytest.mark.parametrize("content, extra, message", [
    (b"", [], "has 0 token(s)"),
    (b"Hi", [], "has 1 token(s)"),
    (b"\xff\xfe bad bytes", [], "is not UTF-8"),
    (b"plenty of words to score here", ["--stride", "32"], "must be smaller than the model's context (32 tokens)"),
])
def test_bad_score_input_is_a_one_line_error(models_dir, tmp_path, content, extra, message):
    text_file = tmp_path / "text.txt"
    text_file.write_bytes(content)
    result = run_gpt2("--score", text_file, "--models_dir", models_dir, *extra)
    stderr = result.stderr.decode()
    assert result.returncode != 0 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert message in stderr


def test_missing_score_file_is_a_one_line_error_naming_it(models_dir, tmp_path):
    result = run_gpt2("--score", tmp_path / "nope.txt", "--models_dir", models_dir)
    assert result.returncode != 0 and "nope.txt" in result.stderr.decode()
