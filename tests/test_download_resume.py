"""Resuming and retrying downloads (download.py) against a server on 127.0.0.1 that misbehaves.

Within a run: a reset, a read timeout, a body cut short or a 5xx is retried, resuming with Range
from the bytes on disk. Across runs: the .part and the facts saved beside it (size, Content-MD5,
ETag) let the next run resume without HEAD, and start over whenever the bytes cannot be trusted.
"""
import json
import time

import pytest

import download
from served_model import (
    DATA,
    SIZE,
    failed_download,
    fetch_model,
    interrupted_download,
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
