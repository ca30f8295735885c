"""The --explain pages against hostile input (issue 19): text from the user or the model is shown,
never run, and never substituted twice; a path that is not a regular file is refused before any
work; a failed write leaves nothing behind."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import browser_page
import explain
import explain_page
import reference
from conftest import REPO_DIR, load_fixture
from encoder import get_encoder
from errors import GPT2Error

browser = browser_page.browser  # the fixture
ENV = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")
# each would run a script, end the JSON's <script> element, open a comment, or be substituted again
HOSTILE = ["</script><script>window.pwned = 1</script>", "{data}", "{title}", "<!--<script>", "\"'`",
           "<img src=x onerror=\"window.pwned = 1\">", "</title><img src=y onerror=window.pwned=1>"]
HOSTILE_TEXT = " ".join(HOSTILE)


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)],
                          capture_output=True, env=ENV, timeout=120)


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory):
    """tiny-b under a folder whose name holds markup ("a<" / "script>..." spells "a</script>...")."""
    folder = tmp_path_factory.mktemp("hostile") / "{data}<img src=x onerror=window.pwned=1><!--a<" / "script>'\""
    folder.parent.mkdir()
    os.symlink(reference.fixture_dir("tiny-b"), folder)
    return folder


@pytest.fixture(scope="module")
def hostile_report(hostile_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    result = run_cli(HOSTILE_TEXT, "--model", hostile_model, "--n_tokens_to_generate", 4, "--explain", path)
    assert result.returncode == 0, result.stderr.decode()
    return path


def test_no_user_text_is_substituted_twice_or_left_as_markup():
    hparams, params = load_fixture("tiny-b")
    encoder = get_encoder("tiny-b", reference.FIXTURES_DIR)
    tokens = encoder.encode(HOSTILE_TEXT)
    data = explain.explain_data(encoder, hparams, params, tokens, [], [], HOSTILE_TEXT)
    page = explain_page.render(data, {t: HOSTILE_TEXT for t in tokens}, HOSTILE_TEXT)
    head, body = page.split("<body>", 1)
    assert page.count('<script id="data" type="application/json">') == 1
    assert head.count("<title>") == 1 and "&lt;/script&gt;" in head and "{data}" in head
    script_data = body.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in script_data, "every < in the data is written as \\u003c"
    assert json.loads(script_data) == json.loads(json.dumps(explain_page.page_data(data, {t: HOSTILE_TEXT
                                                                                         for t in tokens})))


def test_hostile_prompt_model_path_tokens_and_card_run_nothing_in_chromium(browser, hostile_report, hostile_model):
    opened = browser_page.OpenedPage(browser, hostile_report)
    page = opened.page
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("img").count() == 0
    shown = page.evaluate("() => JSON.parse(document.getElementById('data').textContent)")
    text = hostile_report.read_text(encoding="utf-8")
    embedded = text.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert shown == json.loads(embedded), "the browser reads the same JSON as Python"
    assert HOSTILE_TEXT in "".join(t["text"] for t in shown["tokens"]), "the token texts come back unchanged"
    assert str(hostile_model) in shown["card"]
    title = page.title()
    assert HOSTILE_TEXT[:40] in title and str(hostile_model) in title
    assert page.inner_text("h1") == title
    opened.assert_quiet()
    page.close()


# ---------------------------------------------------------------- where the page is written


@pytest.fixture(params=["fifo", "device", "folder", "symlink to a fifo", "symlink to a folder", "dangling symlink"])
def not_a_regular_file(request, tmp_path):
    target = {"fifo": tmp_path / "fifo", "device": "/dev/null", "folder": tmp_path / "folder"}
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    if request.param.startswith("symlink to"):
        os.symlink(target[request.param.removeprefix("symlink to a ")], tmp_path / "link")
        return tmp_path / "link"
    if request.param == "dangling symlink":
        os.symlink(tmp_path / "nothing", tmp_path / "link")
        return tmp_path / "link"
    return target[request.param]


def test_a_path_that_is_not_a_regular_file_is_refused_before_any_work(not_a_regular_file, tmp_path):
    before = os.lstat(not_a_regular_file)
    result = run_cli("hello", "--models_dir", tmp_path / "no-such-models", "--explain", not_a_regular_file)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and stderr.count("\n") == 1 and "--explain" in stderr, stderr
    assert "no-such-models" not in stderr, "the path is checked before the model is even looked for"
    after = os.lstat(not_a_regular_file)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_a_symlink_to_a_report_is_kept_and_the_report_it_names_is_replaced(tmp_path):
    (tmp_path / "old.html").write_text("old")
    os.symlink(tmp_path / "old.html", tmp_path / "link.html")
    explain_page.write_page(str(tmp_path / "link.html"), "--explain", "new")
    assert os.path.islink(tmp_path / "link.html") and (tmp_path / "old.html").read_text() == "new"


def test_a_full_disk_leaves_no_temporary_file_and_the_old_report_whole(tmp_path, monkeypatch):
    (tmp_path / "r.html").write_text("the old report")
    real_named_temporary_file = explain_page.tempfile.NamedTemporaryFile

    def on_a_full_disk(*args, **kwargs):
        f = real_named_temporary_file(*args, **kwargs)
        real_write = f.write

        def write(text):
            real_write(text[:100])  # part of it fits, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f

    monkeypatch.setattr(explain_page.tempfile, "NamedTemporaryFile", on_a_full_disk)
    with pytest.raises(GPT2Error, match="No space left on device"):
        explain_page.write_page(str(tmp_path / "r.html"), "--explain", "x" * 10_000)
    assert sorted(os.listdir(tmp_path)) == ["r.html"] and (tmp_path / "r.html").read_text() == "the old report"


# ---------------------------------------------------------------- the capped large view


def test_a_capped_large_view_keeps_the_last_query_rows_of_the_uncapped_trace(monkeypatch):
    hparams, params = load_fixture("tiny-b")
    encoder = get_encoder("tiny-b", reference.FIXTURES_DIR)
    tokens = reference.reference_tokens(hparams["n_vocab"], 50, seed=5)
    uncapped = explain.explain_data(encoder, hparams, params, tokens, [], [], "card")["attention_rows"]
    monkeypatch.setattr(explain, "MAX_ATTENTION_CELLS", 3 * 4 * 50 * 7)  # room for 7 query rows
    capped = explain.explain_data(encoder, hparams, params, tokens, [], [], "card")["attention_rows"]
    assert uncapped.shape == (3, 4, 50, 50) and capped.shape == (3, 4, 7, 50)
    assert np.array_equal(capped, uncapped[:, :, -7:]), "the same forward pass: the same float32 numbers"
