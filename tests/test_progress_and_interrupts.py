"""Long work seen and stopped as a user sees and stops it: progress bars on a terminal, and Ctrl-C.

The progress tests give the CLI a pseudo-terminal for stderr (stdout stays a pipe). The interrupt
tests send a real SIGINT to a CLI whose model has been slowed down (each forward pass sleeps), so
that the signal lands in the middle of the work.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import reference
from conftest import REPO_DIR, run_on_terminal, symlinked_models_dir

ENV = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")

# Runs the CLI with every forward pass slowed by argv[1] seconds; the CLI's arguments follow.
SLOW_CLI = (
    "import sys, time; sys.path.insert(0, {repo!r}); import cli, gpt2\n"
    "delay, fast = float(sys.argv[1]), gpt2.transformer\n"
    "def slow(*args, **kwargs):\n"
    "    time.sleep(delay)\n"
    "    return fast(*args, **kwargs)\n"
    "gpt2.transformer = slow\n"
    "cli.main(sys.argv[2:])\n"
).format(repo=REPO_DIR)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-b"})  # n_ctx 64: room for long runs


def cli(*args):
    return [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)]


def slow_cli(delay, *args):
    return [sys.executable, "-c", SLOW_CLI, str(delay), *map(str, args)]


def run_with_terminal_stderr(command):
    """Run with stderr on a pseudo-terminal: (exit status, stdout bytes, what the terminal showed)."""
    return run_on_terminal(command, ENV)


def write_prompts(path, n):
    path.write_text("".join(f"Prompt number {i} says\n" for i in range(n)), encoding="utf-8")
    return path


# ---- progress


def test_prompts_file_shows_prompts_done_total_and_tokens_per_second_on_a_terminal(models_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.txt", 6)
    status, stdout, screen = run_with_terminal_stderr(
        cli("--prompts_file", prompts, "--n_tokens_to_generate", 5, "--models_dir", models_dir, "--batch_size", 2))
    assert status == 0, screen
    assert "6/6" in screen and "tokens/s" in screen, screen
    assert len(stdout.splitlines()) == 6  # the records are untouched by the bar


def test_score_shows_tokens_scored_of_total_on_a_terminal(models_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(reference.SCORE_TEXT, encoding="utf-8")
    status, stdout, screen = run_with_terminal_stderr(cli("--score", text, "--models_dir", models_dir))
    assert status == 0, screen
    encoder_total = json.loads(subprocess.run(cli("--score", text, "--models_dir", models_dir, "--json"),
                                              capture_output=True, env=ENV).stdout)["n_tokens_scored"]
    assert f"{encoder_total}/{encoder_total}" in screen, screen
    assert stdout.startswith(b"tokens scored: ")


def test_no_progress_bar_when_stderr_is_a_pipe(models_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.txt", 4)
    result = subprocess.run(cli("--prompts_file", prompts, "--n_tokens_to_generate", 3, "--models_dir", models_dir),
                            capture_output=True, env=ENV)
    assert result.returncode == 0 and result.stderr == b""


# ---- Ctrl-C


def read_until(stream, n_bytes, deadline):
    data = b""
    while len(data) < n_bytes:
        assert time.monotonic() < deadline, f"only {data!r} arrived"
        data += os.read(stream.fileno(), 4096)
    return data


def test_ctrl_c_during_generation_keeps_the_printed_text_and_exits_130(models_dir):
    args = ["Once upon a time", "--n_tokens_to_generate", 50, "--models_dir", models_dir, "--ignore_eos"]
    complete = subprocess.run(cli(*args), capture_output=True, env=ENV).stdout
    process = subprocess.Popen(slow_cli(0.05, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    printed = read_until(process.stdout, 5, time.monotonic() + 60)
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=30)
    printed += rest
    assert process.returncode == 130
    assert b"Traceback" not in stderr and b"KeyboardInterrupt" not in stderr, stderr.decode()
    assert 5 <= len(printed) < len(complete) and complete.startswith(printed)


def test_ctrl_c_during_a_prompts_file_run_leaves_complete_records_and_a_rerun_finishes_it(models_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.txt", 40)
    args = ["--prompts_file", prompts, "--n_tokens_to_generate", 10, "--models_dir", models_dir, "--batch_size", 2]
    complete = subprocess.run(cli(*args), capture_output=True, env=ENV).stdout
    output = tmp_path / "out.jsonl"
    process = subprocess.Popen(slow_cli(0.01, *args, "--output", output), stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 60
    while not output.exists() or output.read_bytes().count(b"\n") < 4:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and b"Traceback" not in stderr, stderr.decode()
    written = output.read_bytes()
    assert written.endswith(b"\n") and complete.startswith(written), "only whole records, in order"
    assert written.count(b"\n") < 40, "the interrupt should land in the middle of the run"
    rerun = subprocess.run(cli(*args, "--output", output), capture_output=True, env=ENV)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert output.read_bytes() == complete
