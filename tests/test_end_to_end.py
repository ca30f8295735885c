"""From nothing to text: the CLI downloads a fixture model from a local HTTP server, then generates.

The server (http_fixture_server.py) serves tests/fixtures/tiny-a as /124M/<file> on 127.0.0.1, as
OpenAI's bucket serves the real 124M; the expected text is transformers' greedy continuation.
"""
import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest

import download
import reference
from conftest import REPO_DIR
from encoder import get_encoder
from http_fixture_server import FixtureServer

DATA_FILE = "model.ckpt.data-00000-of-00001"
DATA = "/124M/" + DATA_FILE


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    os.symlink(reference.fixture_dir("tiny-a"), served / "124M")
    with FixtureServer(served) as server:
        yield server


@pytest.fixture
def models_dir(tmp_path):
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def expected_text():
    with np.load(reference.REFERENCE_FILE) as data:
        tokens = data["tiny-a/cli_tokens"].tolist()
    return get_encoder("tiny-a", reference.FIXTURES_DIR).decode(tokens).encode("utf-8"), len(tokens)


def run_cli(server, models_dir, n_tokens):
    env = {k: v for k, v in os.environ.items() if k != download.BASE_URL_ENV}
    return subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), reference.CLI_PROMPT,
         "--n_tokens_to_generate", str(n_tokens), "--models_dir", str(models_dir), "--base_url", server.url],
        capture_output=True, env=env, timeout=120,
    )


def assert_one_line_error(result, *fragments):
    stderr = result.stderr.decode().strip().splitlines()[-1]  # progress bars come before the error
    assert result.returncode == 1 and result.stdout == b"" and "Traceback" not in result.stderr.decode()
    assert stderr.startswith("gpt2.py: error: ")
    for fragment in fragments:
        assert fragment in stderr, stderr


def assert_downloaded(models_dir):
    files = sorted(os.listdir(models_dir / "124M"))
    assert files == sorted(download.MODEL_FILES), files  # and no .part left behind
    fixture = reference.fixture_dir("tiny-a")
    _, mismatch, errors = filecmp.cmpfiles(fixture, models_dir / "124M", download.MODEL_FILES, shallow=False)
    assert not mismatch and not errors


def test_first_run_downloads_the_model_and_prints_the_continuation(server, models_dir, expected_text):
    text, n_tokens = expected_text
    result = run_cli(server, models_dir, n_tokens)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == text  # progress bars went to stderr, not into the text
    assert "model.ckpt.data" in result.stderr.decode()
    assert_downloaded(models_dir)


def test_second_run_makes_no_request(server, models_dir, expected_text):
    text, n_tokens = expected_text
    run_cli(server, models_dir, n_tokens)
    n_requests = len(server.requests)
    assert run_cli(server, models_dir, n_tokens).stdout == text
    assert len(server.requests) == n_requests


def test_a_dropped_connection_fails_clearly_and_the_next_run_resumes(server, models_dir, expected_text):
    text, n_tokens = expected_text
    server.drop_after[DATA] = 1_000_000
    assert_one_line_error(run_cli(server, models_dir, n_tokens), "run again to resume")
    assert not (models_dir / "124M" / DATA_FILE).exists()
    result = run_cli(server, models_dir, n_tokens)
    assert result.returncode == 0 and result.stdout == text
    resumed = [r for r in server.requests if r.path == DATA and r.method == "GET"][-1]
    assert resumed.range == "bytes=1000000-"
    assert_downloaded(models_dir)


def test_a_truncated_body_fails_clearly_and_the_next_run_completes(server, models_dir, expected_text):
    text, n_tokens = expected_text
    server.truncate_after[DATA] = 123_456
    assert_one_line_error(run_cli(server, models_dir, n_tokens), "ended after 123456 of", "run again")
    assert not (models_dir / "124M" / DATA_FILE).exists()
    assert run_cli(server, models_dir, n_tokens).stdout == text
    assert_downloaded(models_dir)


def test_a_404_is_a_one_line_error_naming_the_url(server, models_dir, expected_text):
    server.not_found.add("/124M/vocab.bpe")
    assert_one_line_error(run_cli(server, models_dir, 4), f"{server.url}/124M/vocab.bpe", "HTTP 404")
    assert not (models_dir / "124M" / "vocab.bpe").exists()
