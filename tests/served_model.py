"""What the download tests share: a model size of 7 random files served on 127.0.0.1, and ways to fetch it.

The server (http_fixture_server.py) serves a few hundred KB of deterministic random bytes under
each of the 7 file names, and misbehaves on demand. Test modules wrap these in their own fixtures.
"""
import random

import pytest

import download
from errors import GPT2Error
from http_fixture_server import FixtureServer

SIZE = "124M"
DATA = "model.ckpt.data-00000-of-00001"


def random_model_server(tmp_path):
    """A FixtureServer (a context manager) for <tmp_path>/served/124M/<file>, the 7 files of 150 KB to
    390 KB each, the same bytes on every run (a fresh copy for each test, which may change them)."""
    root = tmp_path / "served"
    (root / SIZE).mkdir(parents=True)
    for i, name in enumerate(download.MODEL_FILES):
        (root / SIZE / name).write_bytes(random.Random(i).randbytes(150_000 + 40_000 * i))
    return FixtureServer(root)


def quick_and_isolated(monkeypatch):
    """Retries wait BACKOFF, 2 * BACKOFF, ... seconds: shortened so that tests of them stay quick.
    Tests pass base_url explicitly; a GPT2_BASE_URL set in the shell must not interfere."""
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    monkeypatch.delenv(download.BASE_URL_ENV, raising=False)


def served(server, name):
    return (server.root / SIZE / name).read_bytes()


def url_path(name):
    return f"/{SIZE}/{name}"


def fetch_model(base_url, models_dir, model_size=SIZE):
    return download.download_model_files(model_size, str(models_dir), base_url)


def failed_download(base_url, models_dir, model_size=SIZE):
    """Run a download that must fail; return its GPT2Error message, checked to be one line."""
    with pytest.raises(GPT2Error) as excinfo:
        fetch_model(base_url, models_dir, model_size)
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def interrupted_download(server, models_dir, after=30_000):
    """A run that fails on the data file after `after * tries` bytes, leaving a .part and its facts;
    then the fault is gone."""
    path = url_path(DATA)
    server.drop_every[path] = after
    failed_download(server.url, models_dir)
    del server.drop_every[path]
    return models_dir / SIZE / (DATA + ".part")
