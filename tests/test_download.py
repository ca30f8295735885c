"""Downloading a model size (download.download_model_files) from a real HTTP server on 127.0.0.1.

The server (http_fixture_server.py) serves a few hundred KB of deterministic random bytes under
each of the 7 file names, and can be told to drop connections, cut bodies short, answer 404,
send a wrong Content-MD5 or ignore Range headers.
"""
import errno
import io
import os
import random
import socket

import pytest
from tqdm import tqdm

import download
from errors import GPT2Error
from http_fixture_server import FixtureServer

SIZE = "124M"
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="session")
def served_dir(tmp_path_factory):
    """<root>/124M/<file> for the 7 files: 150 KB to 390 KB each, the same bytes on every run."""
    root = tmp_path_factory.mktemp("served")
    (root / SIZE).mkdir()
    for i, name in enumerate(download.MODEL_FILES):
        (root / SIZE / name).write_bytes(random.Random(i).randbytes(150_000 + 40_000 * i))
    return root


@pytest.fixture
def server(served_dir):
    with FixtureServer(served_dir) as server:
        yield server


@pytest.fixture
def models_dir(tmp_path):
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def no_base_url_env(monkeypatch):
    """Tests pass base_url explicitly; a GPT2_BASE_URL set in the shell must not interfere."""
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


def closed_port():
    """A port on 127.0.0.1 that nothing listens on (the OS just handed it out and took it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_downloads_all_seven_files_byte_identical(server, models_dir):
    model_dir = fetch_model(server.url, models_dir)
    assert model_dir == str(models_dir / SIZE)
    assert sorted(os.listdir(model_dir)) == sorted(download.MODEL_FILES)  # no .part left behind
    for name in download.MODEL_FILES:
        assert (models_dir / SIZE / name).read_bytes() == served(server, name)


def test_resumes_after_connection_drop_mid_file(server, models_dir):
    path, size = url_path(DATA), len(served(server, DATA))
    server.drop_after[path] = 100_000
    assert "run again to resume" in failed_download(server.url, models_dir)
    part = models_dir / SIZE / (DATA + ".part")
    kept = part.stat().st_size
    assert not (models_dir / SIZE / DATA).exists()

    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    first, second = server.gets(path)
    assert kept == first.sent == 100_000  # every byte that arrived before the drop was kept
    assert second.range == f"bytes={kept}-"
    assert first.sent + second.sent == size  # nothing was fetched twice


def test_truncated_body_fails_keeps_part_and_next_run_completes(server, models_dir):
    path, size = url_path(DATA), len(served(server, DATA))
    server.truncate_after[path] = 50_000
    message = failed_download(server.url, models_dir)
    assert f"ended after 50000 of {size} bytes" in message
    assert not (models_dir / SIZE / DATA).exists()
    assert (models_dir / SIZE / (DATA + ".part")).stat().st_size == 50_000

    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert server.gets(path)[1].range == "bytes=50000-"


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


def test_corrupt_part_is_caught_by_whole_file_md5_on_resume(server, models_dir):
    (models_dir / SIZE).mkdir(parents=True)
    part = models_dir / SIZE / (DATA + ".part")
    part.write_bytes(bytes(1000))  # zeros: not a prefix of the served file
    assert "MD5" in failed_download(server.url, models_dir)
    assert not part.exists() and not (models_dir / SIZE / DATA).exists()
    methods = [(r.method, r.range) for r in server.requests if r.path == url_path(DATA)]
    assert methods == [("HEAD", None), ("GET", "bytes=1000-")]  # HEAD gives the whole file's MD5

    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)


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
    failed_download(server.url, models_dir)
    progress_bars.clear()
    fetch_model(server.url, models_dir)
    (bar,) = [bar for bar in progress_bars if bar.desc == DATA]
    size = len(served(server, DATA))
    assert (bar.desc, bar.initial, bar.total, bar.n) == (DATA, 50_000, size, size)


def test_network_failure_names_the_url(models_dir):
    base_url = f"http://127.0.0.1:{closed_port()}"
    message = failed_download(base_url, models_dir)
    assert f"{base_url}/{SIZE}/checkpoint" in message
    assert download.BASE_URL_ENV in message
    assert not (models_dir / SIZE / "checkpoint").exists()


def test_base_url_without_scheme_gives_gpt2error(models_dir):
    message = failed_download("example.org/models", models_dir)
    assert "example.org/models/124M/checkpoint" in message and download.BASE_URL_ENV in message


def test_server_ignoring_range_restarts_cleanly(server, models_dir):
    (models_dir / SIZE).mkdir(parents=True)
    content = served(server, DATA)
    (models_dir / SIZE / (DATA + ".part")).write_bytes(content[:1000])
    server.ignore_range = True
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == content  # not the 1000 bytes twice
    (get,) = server.gets(url_path(DATA))
    assert get.range == "bytes=1000-" and get.sent == len(content)


@pytest.mark.parametrize("extra", [0, 10])
def test_part_as_long_as_the_file_or_longer_restarts_from_zero(server, models_dir, extra):
    (models_dir / SIZE).mkdir(parents=True)
    content = served(server, DATA)
    (models_dir / SIZE / (DATA + ".part")).write_bytes(content + b"x" * extra)
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == content
    ranged, fresh = server.gets(url_path(DATA))  # 416 Range Not Satisfiable, then from zero
    assert (ranged.range, ranged.sent) == (f"bytes={len(content) + extra}-", 0)
    assert (fresh.range, fresh.sent) == (None, len(content))


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
