"""Downloads (download.py) from a server on 127.0.0.1 that answers in hostile or broken ways.

Each case must end in a one-line GPT2Error that says what to do next, or in the right files: never
a file under its final name that is not the whole file, never a wait of hours, never a file that
is not a regular one written through.
"""
import os
import time

import pytest

import download
from served_model import (
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


def kept_files(models_dir):
    folder = models_dir / SIZE
    return sorted(name for name in download.MODEL_FILES if (folder / name).exists())


def test_a_plain_get_answered_with_part_of_the_file_keeps_nothing_under_the_final_name(server, models_dir):
    server.partial_plain_get = True  # 206 with the first half, to a request that asked for the whole file
    message = failed_download(server.url, models_dir)
    assert "206" in message and f"{server.url}/{SIZE}/" in message
    assert kept_files(models_dir) == []


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_of_an_hour_gives_up_at_once_saying_when_to_try_again(server, models_dir, status):
    path = url_path("checkpoint")
    server.fail_with[path] = [status] * 10
    server.extra_headers[path] = {"Retry-After": "3600"}
    start = time.monotonic()
    message = failed_download(server.url, models_dir)
    assert time.monotonic() - start < 5  # urllib3 alone would sleep the hour, silently
    assert f"HTTP {status}" in message and "3600 s" in message and "try again after" in message
    assert kept_files(models_dir) == []


def test_a_short_retry_after_is_waited_for_saying_so(server, models_dir, monkeypatch, capsys):
    monkeypatch.setattr(download, "MAX_RETRY_AFTER", 1.0)
    path = url_path("checkpoint")
    server.fail_with[path] = [503]
    server.extra_headers[path] = {"Retry-After": "1"}
    fetch_model(server.url, models_dir)
    assert "asks to wait 1 s: waiting" in capsys.readouterr().err
    assert (models_dir / SIZE / "checkpoint").read_bytes() == served(server, "checkpoint")


TARGETS = [(name, kind) for name in ("hparams.json", "vocab.bpe.part", "vocab.bpe.part.json", ".download.lock")
           for kind in ("fifo", "directory", "symlink")
           if (name, kind) != ("hparams.json", "symlink")]  # a final name may link to the file: folders of links work


@pytest.mark.parametrize("name, kind", TARGETS)
def test_a_file_to_write_that_is_not_a_regular_file_is_refused_and_left_alone(server, models_dir, name, kind):
    folder = models_dir / SIZE
    folder.mkdir(parents=True)
    target = folder / name
    outside = models_dir / "someone-elses-file"
    outside.write_bytes(b"keep me")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        os.symlink(outside, target)
    message = failed_download(server.url, models_dir)
    assert f"{target} is a" in message and "not a regular file" in message
    assert os.path.lexists(target) and (os.path.islink(target) or not os.path.isfile(target))
    assert outside.read_bytes() == b"keep me"


def test_a_redirect_to_a_file_url_names_where_it_went_not_the_good_url_as_invalid(server, models_dir):
    server.redirect[url_path("checkpoint")] = "file:///etc/passwd"
    message = failed_download(server.url, models_dir)
    assert "redirected it to file:///etc/passwd" in message and "invalid URL" not in message
    assert kept_files(models_dir) == []


@pytest.mark.parametrize("length", ["-5", "12abc"])
def test_an_invalid_content_length_is_not_reported_as_missing(server, models_dir, length):
    server.extra_headers[url_path("checkpoint")] = {"Content-Length": length}
    message = failed_download(server.url, models_dir)
    assert f"invalid Content-Length ('{length}')" in message and "no Content-Length" not in message


def test_a_web_page_sent_in_place_of_every_file_is_moved_aside_and_fetched_anew(tmp_path, models_dir):
    """A server that sends an HTML page with status 200 for each file: each rerun moves the files that
    fail their checks aside and fetches them anew, so no one has to delete the 7 files by hand."""
    import shutil

    import reference
    import utils
    from errors import GPT2Error
    from http_fixture_server import FixtureServer

    served_dir = tmp_path / "served" / SIZE
    shutil.copytree(reference.fixture_dir("tiny-a"), served_dir, ignore=shutil.ignore_patterns(".*"))
    real = {name: (served_dir / name).read_bytes() for name in download.MODEL_FILES}
    with FixtureServer(tmp_path / "served") as server:
        for name in download.MODEL_FILES:
            (served_dir / name).write_bytes(b"<html><body>Please log in to the Wi-Fi</body></html>")
        messages = []
        for _ in range(3):
            try:
                utils.load_encoder_hparams_and_params(SIZE, str(models_dir), server.url)
                break
            except GPT2Error as e:
                messages.append(str(e))
                assert "\n" not in str(e) and "run again to download" in str(e)
            for name, data in real.items():  # the network is fixed after the first try
                (served_dir / name).write_bytes(data)
        else:
            pytest.fail(f"still failing after 3 runs: {messages}")
    assert "hparams.json, encoder.json, vocab.bpe, model.ckpt.index" in messages[0]
    assert len(messages) <= 2  # the data file can only be checked once the index is sound
    assert (models_dir / SIZE / "hparams.json.damaged").exists()  # renamed, never deleted
