"""Shared fixtures: the committed OpenAI-format test models and the repository on sys.path."""
import fcntl
import io
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
sys.path.insert(0, REPO_DIR)
sys.path.insert(0, TESTS_DIR)

import download  # noqa: E402
import reference  # noqa: E402
import utils  # noqa: E402


def load_fixture(name):
    """(hparams, params) of a committed fixture model, read by this project's loader."""
    model_dir = reference.fixture_dir(name)
    hparams = utils.load_hparams(model_dir)
    return hparams, utils.load_params(model_dir, hparams)


@pytest.fixture(params=reference.FIXTURE_CONFIGS)
def fixture_name(request):
    return request.param


@pytest.fixture
def copied_model_dir(tmp_path):
    """A writable copy of the tiny-a fixture as <models_dir>/124M, for tests that damage files."""
    models_dir = tmp_path / "models"
    # without the remembered integrity check a load of the committed fixture may have left there
    shutil.copytree(reference.fixture_dir("tiny-a"), models_dir / "124M", ignore=shutil.ignore_patterns(".*"))
    return models_dir / "124M"


@pytest.fixture
def offline(monkeypatch):
    """Point downloads at a closed local port, so a test can never reach the internet."""
    monkeypatch.setenv(download.BASE_URL_ENV, "http://127.0.0.1:9/gpt-2/models")


OFFLINE_ENV = {download.BASE_URL_ENV: "http://127.0.0.1:9/gpt-2/models"}  # a closed port: never the internet


def run_gpt2(*args, timeout=120, stdin=None):
    """`python gpt2.py ARGS` in a fresh process, offline; its CompletedProcess (stdout and stderr as bytes)."""
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)],
                          capture_output=True, env=dict(os.environ, **OFFLINE_ENV), timeout=timeout, input=stdin)


def json_lines(data):
    """The records of JSON Lines output, bytes."""
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def symlinked_models_dir(tmp_path_factory, sizes):
    """A models dir whose <size>/ folders are committed fixtures, e.g. {"124M": "tiny-a", "355M": "tiny-b"}."""
    root = tmp_path_factory.mktemp("models")
    for size, name in sizes.items():
        os.symlink(reference.fixture_dir(name), root / size)
    return root


class RecordingStream(io.BytesIO):
    """A binary stream that keeps each write apart, to see what was written when."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))
        return super().write(data)


def run_on_terminal(command, env, stdout_too=False):
    """Run with stderr (and stdout, if stdout_too) on a 24 x 120 pseudo-terminal:
    (exit status, stdout bytes or None, what the terminal showed)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    stdout = secondary if stdout_too else subprocess.PIPE
    process = subprocess.Popen(command, stdout=stdout, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    out = None if stdout_too else process.stdout.read()
    return process.wait(timeout=60), out, screen.decode("utf-8", "replace")


def token_events(encoder, tokens, eot_token, stops=()):
    """The engine's events for a request that chooses exactly these tokens: its Continuation (the
    per-request decoder) settles the text, as in a real run."""
    from continuation import Continuation
    from engine import Event
    from settings import Settings

    settings = Settings(max_tokens=len(tokens), stop=tuple(stops), ignore_eos=eot_token is None)
    continuation = Continuation(encoder.decode_bytes, encoder.eot_token, settings)
    for token in tokens:
        text = continuation.add(token)
        yield None, Event(token, text, continuation.finish_reason)
        if continuation.done:
            break


def engine_completions(prompts, params, n_head, n_new, eot_token=None, max_rows=8, **settings):
    """Every prompt's new tokens, generated together by the engine, all submitted at once."""
    from engine import Engine
    from settings import Settings

    engine = Engine(params, n_head, eot_token, lambda tokens: b"", max_rows=max_rows)
    requests = [engine.submit(prompt, Settings(max_tokens=n_new, **settings)) for prompt in prompts]
    for _ in engine.run():
        pass
    return [request.continuation.tokens for request in requests]
