"""--score docs.jsonl: a corpus scored document by document, many documents to a forward pass.

Tolerance: 1e-4 absolute on each number against `--score` of the document alone. Both are float32
forward passes over the same tokens; packing only changes which rows share a matrix product, which
moves each log-probability by round-off (~1e-6), and averaging does not grow it.
"""
import json
import os
import sys

import numpy as np
import pytest

import corpus
import gpt2
import reference
from conftest import OFFLINE_ENV, REPO_DIR, json_lines, load_fixture, run_gpt2, run_on_terminal, symlinked_models_dir
from encoder import get_encoder

TOLERANCE = 1e-4
STRIDE = 16  # tiny-a's n_ctx is 32: the long documents below span several windows

DOCUMENTS = [
    {"text": "Hello world, this is a short document.", "id": "a"},
    {"text": reference.SCORE_TEXT, "id": "long"},  # more than 2 x n_ctx tokens: windowed
    {"text": "Ünïcödé ✓ 😀 in a document", "id": 3},
    {"text": "Two tokens"},
    {"text": "The quick brown fox jumps over the lazy dog. " * 3, "id": "just under n_ctx"},
] + [{"text": f"Document number {i} is about the number {i * 7}.", "id": f"d{i}"} for i in range(70)]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-a"})


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("tiny-a", reference.FIXTURES_DIR)


def write_corpus(path, documents):
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents), encoding="utf-8")
    return path


def test_each_record_equals_scoring_its_document_alone(encoder, monkeypatch):
    """The library's own --score (gpt2.token_logprobs) on each document, against the packed passes;
    a small PACK_TOKENS makes the 75 documents fill many passes, with a part-filled last one."""
    monkeypatch.setattr(corpus, "PACK_TOKENS", 100)
    hparams, params = load_fixture("tiny-a")
    documents = [corpus.Document(i + 1, d.get("id"), d["text"]) for i, d in enumerate(DOCUMENTS)]
    records, _ = corpus.score_documents(documents, encoder, params, hparams["n_head"], STRIDE, with_tokens=True)
    packed = [json.loads(r) for r in records]
    assert any(len(encoder.encode(d["text"])) > hparams["n_ctx"] for d in DOCUMENTS)
    for document, record in zip(DOCUMENTS, packed):
        tokens = encoder.encode(document["text"])
        alone = gpt2.token_logprobs(tokens, params, hparams["n_head"], STRIDE)
        ours = np.array([t["logprob"] for t in record["tokens"]])
        assert np.abs(ours - alone).max() <= TOLERANCE, (document, np.abs(ours - alone).max())
        assert [t["token"] for t in record["tokens"]] == tokens[1:]
        assert record["avg_nll"] == pytest.approx(-alone.astype(np.float64).mean(), abs=TOLERANCE)
        assert record["n_tokens_scored"] == len(tokens) - 1


def test_cli_records_equal_score_json_of_each_document_alone(models_dir, tmp_path):
    documents = DOCUMENTS[:5]
    result = run_gpt2("--score", write_corpus(tmp_path / "docs.jsonl", documents), "--json", "--stride", STRIDE,
                      "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    got = json_lines(result.stdout)
    assert [(r["line"], r["id"]) for r in got] == [(i + 1, d.get("id")) for i, d in enumerate(documents)]
    for i, (document, record) in enumerate(zip(documents, got)):
        text = tmp_path / f"doc{i}.txt"
        text.write_text(document["text"], encoding="utf-8")
        alone = json.loads(run_gpt2("--score", text, "--json", "--stride", STRIDE, "--models_dir", models_dir).stdout)
        assert record["n_tokens_scored"] == alone["n_tokens_scored"] and record["stride"] == alone["stride"]
        for key in ("avg_nll", "perplexity"):
            assert record[key] == pytest.approx(alone[key], abs=TOLERANCE, rel=TOLERANCE), key
        assert [t["token"] for t in record["tokens"]] == [t["token"] for t in alone["tokens"]]
        assert [t["text"] for t in record["tokens"]] == [t["text"] for t in alone["tokens"]]


def test_without_json_a_record_holds_the_numbers_only(models_dir, tmp_path):
    result = run_gpt2("--score", write_corpus(tmp_path / "docs.jsonl", DOCUMENTS[:2]), "--models_dir", models_dir)
    assert [sorted(r) for r in json_lines(result.stdout)] == [
        ["avg_nll", "id", "line", "n_tokens_scored", "perplexity", "stride"]] * 2


def test_a_bad_record_becomes_an_error_record_and_the_job_goes_on(models_dir, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "A good one here", "id": 1}\n{"text": "", "id": 2}\n{"text": 5, "id": 3}\n'
                    'not json\n[1, 2]\n{"text": "x"}\n{"text": "ok", "id": {"a": 1}}\n\n'
                    '{"text": "The last good one", "id": 9}\n', encoding="utf-8")
    result = run_gpt2("--score", path, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    got = json_lines(result.stdout)
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert [r["id"] for r in got] == [1, 2, 3, None, None, None, None, 9]
    assert ["error" in r for r in got] == [False, True, True, True, True, True, True, False]
    assert "is empty" in got[1]["error"] and "must be a string" in got[2]["error"]
    assert "not valid JSON" in got[3]["error"] and "needs at least 2" in got[5]["error"]


def test_resume_writes_exactly_the_uninterrupted_output(models_dir, tmp_path):
    """Cut after 70 records (inside the second chunk of 64) and mid-line: the run that continues it
    recomputes that chunk and writes only what is missing."""
    path = write_corpus(tmp_path / "docs.jsonl", DOCUMENTS)
    args = ["--score", path, "--stride", STRIDE, "--models_dir", models_dir, "--json"]
    complete = run_gpt2(*args).stdout
    output = tmp_path / "out.jsonl"
    cut = [i for i, byte in enumerate(complete) if byte == ord("\n")][69] + 30
    output.write_bytes(complete[:cut])
    result = run_gpt2(*args, "--output", output)
    assert result.returncode == 0, result.stderr.decode()
    assert output.read_bytes() == complete


def test_output_of_another_corpus_is_refused_and_left_alone(models_dir, tmp_path):
    output = tmp_path / "out.jsonl"
    first = run_gpt2("--score", write_corpus(tmp_path / "a.jsonl", DOCUMENTS[:3]), "--models_dir", models_dir,
                     "--output", output)
    assert first.returncode == 0
    before = output.read_bytes()
    other = run_gpt2("--score", write_corpus(tmp_path / "b.jsonl", DOCUMENTS[3:6]), "--models_dir", models_dir,
                     "--output", output)
    assert other.returncode == 1 and b"is not this run's record" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert output.read_bytes() == before


def test_a_corpus_shows_documents_done_on_a_terminal(models_dir, tmp_path):
    path = write_corpus(tmp_path / "docs.jsonl", DOCUMENTS[:10])
    env = dict(os.environ, **OFFLINE_ENV)
    status, stdout, screen = run_on_terminal(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "--score", str(path), "--models_dir", str(models_dir)], env)
    assert status == 0, screen
    assert "10/10" in screen and "documents" in screen, screen
    assert len(stdout.splitlines()) == 10


def test_explain_is_refused_for_a_corpus(models_dir, tmp_path):
    result = run_gpt2("--score", write_corpus(tmp_path / "docs.jsonl", DOCUMENTS[:1]), "--explain",
                      tmp_path / "x.html", "--models_dir", models_dir)
    assert result.returncode == 2 and b"--explain goes with --score of one text" in result.stderr
