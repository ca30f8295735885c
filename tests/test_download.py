"""Downloading a model size (download.download_model_files) from a real HTTP server on 127.0.0.1.

The server (http_fixture_server.py) serves a few hundred KB of deterministic random bytes under
each of the 7 file names, and can be told to drop connections, cut bodies short, answer 404,
send a wrong or no Content-MD5, ignore Range headers or refuse HEAD.
"""
import errno
import io
import json
import os
import random
import socket
import time

import pytest
from tqdm import tqdm

import download
from errors import GPT2Error
from http_fixture_server import FixtureServer

SIZE = "124M"
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture
def served_dir(tmp_path):
    """<root>/124M/<file> for the 7 files: 150 KB to 390 KB each, the same bytes on every run
    (a fresh copy for each test, which may change them)."""
    root = tmp_path / "served"
    (root / SIZE).mkdir(parents=True)
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
def quick_retries(monkeypatch):
    """Retries wait BACKOFF, 2 * BACKOFF, ... seconds: shortened so that tests of them stay quick."""
    monkeypatch.setattr(download, "BACKOFF", 0.01)


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
    visible = [name for name in os.listdir(model_dir) if not name.startswith(".")]  # not the lock file
    assert sorted(visible) == sorted(download.MODEL_FILES)  # no .part or .part.json left behind
    for name in download.MODEL_FILES:
        assert (models_dir / SIZE / name).read_bytes() == served(server, name)


def test_a_reset_mid_file_is_resumed_within_the_same_run(server, models_dir):
    path, size = url_path(DATA), len(served(server, DATA))
    server.drop_after[path] = 100_000
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    first, second = server.gets(path)
    assert first.sent == 100_000 and first.range is None
    assert second.range == "bytes=100000-"  # every byte that arrived before the reset was kept
    assert second.if_range and second.if_range.startswith('"')  # resume only the same version of the file
    assert first.sent + second.sent == size  # nothing was fetched twice


def test_a_body_cut_short_is_resumed_within_the_same_run(server, models_dir):
    path = url_path(DATA)
    server.truncate_after[path] = 50_000
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert [get.range for get in server.gets(path)] == [None, "bytes=50000-"]


def test_a_connection_that_keeps_dropping_fails_after_retries_and_the_next_run_resumes(server, models_dir):
    path = url_path(DATA)
    server.drop_every[path] = 30_000
    message = failed_download(server.url, models_dir)
    tries = download.RETRIES + 1
    assert f"{tries} tries in a row failed" in message and "run again to resume" in message
    assert len(server.gets(path)) == tries
    part = models_dir / SIZE / (DATA + ".part")
    assert part.stat().st_size == tries * 30_000  # each try added what it received
    assert not (models_dir / SIZE / DATA).exists()

    del server.drop_every[path]
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert server.gets(path)[-1].range == f"bytes={tries * 30_000}-"


def test_a_connection_that_drops_after_each_stretch_of_progress_keeps_going_to_the_end(server, models_dir,
                                                                                        monkeypatch):
    """A try that brought at least PROGRESS new bytes renews the retries: a long file on a line that
    drops every so often gets there within the run (here 13 tries of 30 KB for 390 KB)."""
    monkeypatch.setattr(download, "PROGRESS", 20_000)
    path = url_path(DATA)
    server.drop_every[path] = 30_000
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert len(server.gets(path)) == -(-len(served(server, DATA)) // 30_000)


def test_a_read_timeout_mid_file_is_resumed_within_the_same_run(server, models_dir, monkeypatch):
    """The server goes silent after 50 KB for 10 s: the 0.3 s read timeout gives up on it long before."""
    monkeypatch.setattr(download, "TIMEOUT", (5, 0.3))
    path = url_path(DATA)
    server.stall_after[path], server.stall_seconds = 50_000, 10
    start = time.monotonic()
    fetch_model(server.url, models_dir)
    assert time.monotonic() - start < 5, "the stalled body should have timed out after 0.3 s"
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert [get.range for get in server.gets(path)] == [None, "bytes=50000-"]


def test_a_server_error_before_the_body_is_retried_within_the_same_run(server, models_dir):
    """urllib3's Retry answers 503 and the like with another try; a resuming request keeps its Range."""
    path = url_path(DATA)
    server.truncate_after[path] = 50_000
    server.fail_with[path] = [None, 503, 502]  # the first GET is served (and cut short); the next two fail
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert [get.range for get in server.gets(path)] == [None] + ["bytes=50000-"] * 3


def test_a_server_failing_every_try_is_a_one_line_error_saying_to_try_later(server, models_dir):
    server.fail_with[url_path("checkpoint")] = [503] * 10
    message = failed_download(server.url, models_dir)
    assert "HTTP 503" in message and "try again later" in message
    assert len(server.gets(url_path("checkpoint"))) == download.RETRIES + 1


def test_a_resume_answered_with_other_bytes_starts_over(server, models_dir):
    """A 206 that does not start where the .part ends cannot be appended: the run starts over from byte 0."""
    interrupted_download(server, models_dir)
    server.wrong_content_range = True
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    ranged, fresh = server.gets(url_path(DATA))[-2:]
    assert ranged.range is not None and fresh.range is None


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


def interrupted_download(server, models_dir, after=30_000):
    """A run that fails on the data file after `after * tries` bytes, leaving a .part and its facts;
    then the fault is gone."""
    path = url_path(DATA)
    server.drop_every[path] = after
    failed_download(server.url, models_dir)
    del server.drop_every[path]
    return models_dir / SIZE / (DATA + ".part")


def test_resuming_sends_no_head_request(server, models_dir):
    """Many servers refuse HEAD; resuming needs only GET with Range."""
    interrupted_download(server, models_dir)
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert {request.method for request in server.requests} == {"GET"}


@pytest.mark.parametrize("status", [403, 405, 501])
def test_a_server_refusing_head_still_resumes_to_a_verified_file(server, models_dir, status):
    server.head_status = status
    part = interrupted_download(server, models_dir)
    kept = part.stat().st_size
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    assert server.gets(url_path(DATA))[-1].range == f"bytes={kept}-"


def test_a_damaged_part_is_caught_by_the_whole_file_md5_saved_when_it_started(server, models_dir):
    part = interrupted_download(server, models_dir)
    kept = part.stat().st_size
    part.write_bytes(bytes(kept))  # zeros: no longer a prefix of the served file
    message = failed_download(server.url, models_dir)
    assert "MD5" in message and "run again" in message
    assert not part.exists() and not (models_dir / SIZE / DATA).exists()
    assert server.gets(url_path(DATA))[-1].range == f"bytes={kept}-"  # it was resumed, then checked whole

    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)


def test_a_part_without_its_saved_facts_starts_over(server, models_dir):
    """Nothing says which file or version the bytes belong to, so they are not trusted."""
    (models_dir / SIZE).mkdir(parents=True)
    part = models_dir / SIZE / (DATA + ".part")
    part.write_bytes(bytes(1000))
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served(server, DATA)
    (get,) = server.gets(url_path(DATA))
    assert get.range is None


def test_a_file_changed_on_the_server_since_the_part_began_is_fetched_whole(server, models_dir):
    """If-Range carries the ETag of the first response: another version comes back whole (200)."""
    interrupted_download(server, models_dir)
    served_file = server.root / SIZE / DATA
    served_file.write_bytes(b"a new version " + served_file.read_bytes())
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == served_file.read_bytes()
    last = server.gets(url_path(DATA))[-1]
    assert last.range is not None and last.sent == served_file.stat().st_size


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


def test_server_ignoring_range_restarts_cleanly(server, models_dir):
    part = interrupted_download(server, models_dir)
    kept = part.stat().st_size
    server.ignore_range = True
    fetch_model(server.url, models_dir)
    content = served(server, DATA)
    assert (models_dir / SIZE / DATA).read_bytes() == content  # not the kept bytes twice
    last = server.gets(url_path(DATA))[-1]
    assert last.range == f"bytes={kept}-" and last.sent == len(content)


def test_a_part_as_long_as_the_file_is_fetched_anew(server, models_dir):
    part = interrupted_download(server, models_dir)
    content = served(server, DATA)
    part.write_bytes(content)  # e.g. a run killed between the last byte and the rename
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == content
    assert server.gets(url_path(DATA))[-1].range is None


def test_a_range_past_the_end_of_the_file_starts_over(server, models_dir):
    """416 Range Not Satisfiable (the saved size was wrong, say): one more request, from byte 0."""
    part = interrupted_download(server, models_dir)
    content = served(server, DATA)
    part.write_bytes(content + b"x" * 10)
    facts = json.loads((part.parent / (part.name + ".json")).read_text())
    (part.parent / (part.name + ".json")).write_text(json.dumps(dict(facts, size=len(content) + 100)))
    fetch_model(server.url, models_dir)
    assert (models_dir / SIZE / DATA).read_bytes() == content
    ranged, fresh = server.gets(url_path(DATA))[-2:]
    assert (ranged.range, ranged.sent) == (f"bytes={len(content) + 10}-", 0)
    assert (fresh.range, fresh.sent) == (None, len(content))


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
