"""Downloading a model size (download.download_model_files) from a real HTTP server on 127.0.0.1.

The server (served_model.py, http_fixture_server.py) serves 7 files of random bytes, and can be
told to answer 404, send a wrong or no Content-MD5, or compress what it sends. Resuming and
retrying are in test_download_resume.py, the lock in test_download_lock.py.
"""
import errno
import io
import os
import socket

import pytest
from tqdm import tqdm

import download
from served_model import (
    DATA,
    SIZE,
    failed_download,
    fetch_model,
    quick_and_isolated,
    random_model_server,
    served,
    url_path,
)


@pytest.fixture
def server(tmp_path):
    with random_model_server(tmp_path) as server:
        yield server


@pytest.fixture
def models_dir(tmp_path):
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def quick_retries_and_no_base_url_env(monkeypatch):
    quick_and_isolated(monkeypatch)


def closed_port():
    """A port on 127.0.0.1 that nothing listens on (the OS just handed it out and took it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_downloads_all_seven_files_byte_identical(server, models_dir):
    model_dir = fetch_model(server.url, models_dir)
    assert model_dir == str(models_dir / SIZE)
    visible = [name for name in os.listdir(model_dir) if not name.startswith(".")]  # not the lock file
    assert sorted(visible) == sorted(download.MODEL_FILES)  # no .part or .part.json left behind
    for name in download.MODEL_FILES:
        assert (models_dir / SIZE / name).read_bytes() == served(server, name)


def test_http_404_names_url_and_status(server, models_dir):
    server.not_found.add(url_path("vocab.bpe"))
    message = failed_download(server.url, models_dir)
    assert f"{server.url}/{SIZE}/vocab.bpe" in message
    assert "404" in message
    assert not (models_dir / SIZE / "vocab.bpe").exists()


def test_wrong_content_md5_fails_and_leaves_no_file(server, models_dir):
    server.wrong_md5.add(url_path("encoder.json"))
    assert "MD5" in failed_download(server.url, models_dir)
    assert not (models_dir / SIZE / "encoder.json").exists()
    assert not (models_dir / SIZE / "encoder.json.part").exists()  # resuming it could not help


def test_complete_directory_makes_no_requests(server, models_dir):
    fetch_model(server.url, models_dir)
    server.requests.clear()
    assert fetch_model(server.url, models_dir) == str(models_dir / SIZE)
    assert server.requests == []


def test_complete_file_untouched_when_another_file_fails(server, models_dir):
    (models_dir / SIZE).mkdir(parents=True)
    existing = models_dir / SIZE / "encoder.json"
    existing.write_bytes(b"local copy")  # differs from the server's: a refetch would show
    os.utime(existing, ns=(10**18, 10**18))
    server.not_found.add(url_path("vocab.bpe"))
    failed_download(server.url, models_dir)
    assert existing.read_bytes() == b"local copy"
    assert existing.stat().st_mtime_ns == 10**18
    assert [r for r in server.requests if r.path == url_path("encoder.json")] == []


@pytest.mark.parametrize("model_size", ["../x", "124m", ""])
def test_invalid_model_size_fails_before_any_request(server, models_dir, model_size):
    message = failed_download(server.url, models_dir, model_size)
    assert ", ".join(download.MODEL_SIZES) in message
    assert server.requests == []
    assert not models_dir.exists()


@pytest.mark.parametrize("below_file", ["models", "."])
def test_models_dir_blocked_by_a_regular_file_fails(server, tmp_path, below_file):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    models_dir = blocker / below_file  # a path under a regular file, or the file itself
    message = failed_download(server.url, models_dir)
    assert str(blocker) in message and "--models_dir" in message
    assert server.requests == []


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() == 0, reason="root ignores file permissions")
@pytest.mark.parametrize("read_only", ["models_dir", "model_dir"])
def test_read_only_models_dir_fails(server, models_dir, read_only):
    (models_dir / SIZE).mkdir(parents=True)
    directory = models_dir if read_only == "models_dir" else models_dir / SIZE
    if read_only == "models_dir":
        (models_dir / SIZE).rmdir()  # so the size directory has to be created in it
    directory.chmod(0o500)
    try:
        message = failed_download(server.url, models_dir)
    finally:
        directory.chmod(0o700)
    assert str(models_dir) in message and "--models_dir" in message
    assert server.requests == []


class RecordingBar(tqdm):
    """A real tqdm bar that also keeps itself in `bars`, so a test can read its final state."""

    bars = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bars.append(self)


@pytest.fixture
def progress_bars(monkeypatch):
    monkeypatch.setattr(RecordingBar, "bars", [])
    monkeypatch.setattr("tqdm.tqdm", RecordingBar)  # download.py imports it from tqdm when it downloads
    return RecordingBar.bars


def test_progress_bar_counts_bytes_to_the_file_size(server, models_dir, progress_bars, capsys):
    fetch_model(server.url, models_dir)
    assert [bar.desc for bar in progress_bars] == list(download.MODEL_FILES)
    for bar in progress_bars:
        size = len(served(server, bar.desc))
        assert (bar.unit, bar.total, bar.n) == ("B", size, size)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout is for generated text; progress goes to stderr
    assert DATA in captured.err


def test_progress_bar_of_a_resumed_file_starts_at_the_bytes_on_disk(server, models_dir, progress_bars):
    server.truncate_after[url_path(DATA)] = 50_000
    fetch_model(server.url, models_dir)  # the first try is cut short; the second resumes
    first, second = [bar for bar in progress_bars if bar.desc == DATA]
    size = len(served(server, DATA))
    assert (first.initial, first.n) == (0, 50_000)
    assert (second.initial, second.total, second.n) == (50_000, size, size)


def test_network_failure_names_the_url(models_dir):
    base_url = f"http://127.0.0.1:{closed_port()}"
    message = failed_download(base_url, models_dir)
    assert f"{base_url}/{SIZE}/checkpoint" in message
    assert download.BASE_URL_ENV in message
    assert not (models_dir / SIZE / "checkpoint").exists()


def test_base_url_without_scheme_gives_gpt2error(models_dir):
    message = failed_download("example.org/models", models_dir)
    assert "example.org/models/124M/checkpoint" in message and download.BASE_URL_ENV in message


def test_a_file_served_without_content_md5_is_checked_by_its_size(server, models_dir):
    server.send_md5 = False
    server.truncate_after[url_path(DATA)] = 1000
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)


def test_disk_full_fails_mentioning_disk_space(server, models_dir, monkeypatch):
    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode or "a" in mode:
            return FullDisk(file, mode)
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(download, "open", open_on_a_full_disk, raising=False)
    assert "free some disk space" in failed_download(server.url, models_dir)
    assert not set(os.listdir(models_dir / SIZE)) & set(download.MODEL_FILES)


def test_base_url_argument_wins_over_env_var(server, models_dir, monkeypatch):
    monkeypatch.setenv(download.BASE_URL_ENV, f"http://127.0.0.1:{closed_port()}")
    fetch_model(server.url, models_dir)
    assert len(server.gets(url_path("checkpoint"))) == 1


def test_env_var_is_used_without_base_url_argument(server, models_dir, monkeypatch):
    monkeypatch.setenv(download.BASE_URL_ENV, server.url + "/")
    fetch_model(None, models_dir)
    assert len(server.gets(url_path("checkpoint"))) == 1


def test_default_base_url_is_openais():
    assert download.resolve_base_url(None) == download.DEFAULT_BASE_URL
    url = download.model_file_url(download.resolve_base_url(None), SIZE, "hparams.json")
    assert url == f"{download.DEFAULT_BASE_URL}/{SIZE}/hparams.json"


def test_a_server_that_compresses_when_asked_is_asked_for_the_bytes_as_they_are(server, models_dir):
    """Web servers gzip JSON and text for clients that accept it, with a Content-Length and Content-MD5
    of what they send: saved as received, encoder.json would pass both checks and be gzip, not JSON."""
    server.gzip = "when asked"
    fetch_model(server.url, models_dir)
    for name in download.MODEL_FILES:
        assert (models_dir / SIZE / name).read_bytes() == served(server, name), name
    assert {request.accept_encoding for request in server.requests} == {"identity"}


def test_a_server_that_always_compresses_is_a_one_line_error_and_saves_nothing(server, models_dir):
    """A file stored compressed (Content-Encoding: gzip whatever the client asks): its length and
    ranges count compressed bytes, so it is refused rather than saved as something else."""
    server.gzip = "always"
    message = failed_download(server.url, models_dir)
    assert "Content-Encoding: gzip" in message and "--base_url" in message
    assert not any(name.startswith("checkpoint") for name in os.listdir(models_dir / SIZE))
