"""From nothing to text: the CLI downloads a fixture model from a local HTTP server, then generates.

The server (http_fixture_server.py) serves tests/fixtures/tiny-a as /124M/<file> on 127.0.0.1, as
OpenAI's bucket serves the real 124M; the expected text is transformers' greedy continuation.
"""
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time

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
    """tiny-a served as /124M/<file>, from a copy that a test may damage."""
    served = tmp_path / "served"
    shutil.copytree(reference.fixture_dir("tiny-a"), served / "124M", ignore=shutil.ignore_patterns(".*"))
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


def cli_command(server, models_dir, n_tokens, *extra):
    return [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), reference.CLI_PROMPT,
            "--n_tokens_to_generate", str(n_tokens), "--models_dir", str(models_dir), "--base_url", server.url, *extra]


def cli_env():
    return {k: v for k, v in os.environ.items() if k != download.BASE_URL_ENV}


def run_cli(server, models_dir, n_tokens, *extra):
    return subprocess.run(cli_command(server, models_dir, n_tokens, *extra), capture_output=True, env=cli_env(),
                          timeout=120)


def assert_one_line_error(result, *fragments):
    stderr = result.stderr.decode().strip().splitlines()[-1]  # progress bars come before the error
    assert result.returncode == 1 and result.stdout == b"" and "Traceback" not in result.stderr.decode()
    assert stderr.startswith("gpt2.py: error: ")
    for fragment in fragments:
        assert fragment in stderr, stderr


def assert_downloaded(models_dir):
    files = sorted(name for name in os.listdir(models_dir / "124M") if not name.startswith("."))
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


def test_a_dropped_connection_is_resumed_within_the_run(server, models_dir, expected_text):
    text, n_tokens = expected_text
    server.drop_after[DATA] = 1_000_000
    result = run_cli(server, models_dir, n_tokens)
    assert result.returncode == 0 and result.stdout == text, result.stderr.decode()
    assert [get.range for get in server.gets(DATA)] == [None, "bytes=1000000-"]
    assert_downloaded(models_dir)


def start_slow_download(server, models_dir, min_bytes=200_000):
    """A CLI run whose data file arrives slowly; returns it once its .part holds min_bytes."""
    server.chunk_delay = 0.01  # 16 KiB per 10 ms: the 3 MB data file takes about 2 s
    process = subprocess.Popen(cli_command(server, models_dir, 4), env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = models_dir / "124M" / (DATA_FILE + ".part")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= min_bytes):
        assert time.monotonic() < deadline and process.poll() is None, "the download never got going"
        time.sleep(0.01)
    return process, part


@pytest.mark.parametrize("head", ["allowed", "refused with 405"])
def test_a_run_killed_mid_download_is_resumed_by_the_next(server, models_dir, expected_text, head):
    text, n_tokens = expected_text
    process, part = start_slow_download(server, models_dir)
    process.kill()  # SIGKILL: no chance to clean up
    process.communicate()
    kept = part.stat().st_size
    server.chunk_delay = 0
    server.head_status = 405 if head != "allowed" else None
    result = run_cli(server, models_dir, n_tokens)
    assert result.returncode == 0 and result.stdout == text, result.stderr.decode()
    assert b"waiting for another run" not in result.stderr  # the killed run's lock died with it
    assert server.gets(DATA)[-1].range == f"bytes={kept}-"
    assert_downloaded(models_dir)


def test_ctrl_c_mid_download_exits_130_and_keeps_the_part_for_resuming(server, models_dir, expected_text):
    text, n_tokens = expected_text
    process, part = start_slow_download(server, models_dir)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    assert part.exists() and part.stat().st_size > 0
    server.chunk_delay = 0
    assert run_cli(server, models_dir, n_tokens).stdout == text
    assert server.gets(DATA)[-1].range.startswith("bytes=")


@pytest.mark.parametrize("n_runs", [2, 4])
def test_concurrent_runs_from_an_empty_directory_all_succeed_with_one_download(server, models_dir, expected_text,
                                                                                 n_runs):
    text, n_tokens = expected_text
    server.chunk_delay = 0.002  # long enough for the runs to overlap
    runs = [subprocess.Popen(cli_command(server, models_dir, n_tokens), env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n_runs)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * n_runs, [err.decode()[-500:] for _, err in outputs]
    assert all(out == text for out, _ in outputs)
    assert_downloaded(models_dir)
    assert len(server.gets(DATA)) == 1, "one run downloads, the others wait for it"
    assert any(b"waiting for another run" in err for _, err in outputs)


def test_a_flipped_byte_served_without_md5_is_refused_moved_aside_and_fetched_anew(server, models_dir, expected_text):
    text, n_tokens = expected_text
    served_data = server.root / "124M" / DATA_FILE
    good = served_data.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x01
    served_data.write_bytes(bytes(damaged))
    server.send_md5 = False  # nothing in HTTP can notice: only the checkpoint's own CRC32C can
    result = run_cli(server, models_dir, n_tokens)
    assert_one_line_error(result, DATA_FILE, "tensor model/", "CRC32C", "run again")
    assert (models_dir / "124M" / (DATA_FILE + ".damaged")).read_bytes() == bytes(damaged)
    assert not (models_dir / "124M" / DATA_FILE).exists()

    served_data.write_bytes(good)
    result = run_cli(server, models_dir, n_tokens)
    assert result.returncode == 0 and result.stdout == text, result.stderr.decode()
    assert (models_dir / "124M" / DATA_FILE).read_bytes() == good


def test_two_runs_at_once_on_a_damaged_download_both_refuse_it_by_its_crc32c(server, models_dir, expected_text):
    """The run that downloads checks the tensors before it lets the other one go on: the waiting run
    finds the data file moved aside, fetches it in its turn, and refuses it too, never loading it."""
    text, n_tokens = expected_text
    served_data = server.root / "124M" / DATA_FILE
    good = served_data.read_bytes()
    served_data.write_bytes(good[:-1] + bytes([good[-1] ^ 0x80]))  # the last byte of the last tensor
    server.send_md5 = False
    server.chunk_delay = 0.002  # long enough for the runs to overlap
    runs = [subprocess.Popen(cli_command(server, models_dir, n_tokens), env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert_one_line_error(subprocess.CompletedProcess(run.args, run.returncode, out, err), "CRC32C", "run again")
    moved = sorted(name for name in os.listdir(models_dir / "124M") if name.startswith(DATA_FILE))
    assert moved == [DATA_FILE + ".damaged", DATA_FILE + ".damaged-2"]  # one download each, both kept

    server.chunk_delay = 0
    served_data.write_bytes(good)
    result = run_cli(server, models_dir, n_tokens)
    assert result.returncode == 0 and result.stdout == text, result.stderr.decode()


def test_a_404_is_a_one_line_error_naming_the_url(server, models_dir, expected_text):
    server.not_found.add("/124M/vocab.bpe")
    assert_one_line_error(run_cli(server, models_dir, 4), f"{server.url}/124M/vocab.bpe", "HTTP 404")
    assert not (models_dir / "124M" / "vocab.bpe").exists()
