"""Hostile files and streams on the command line (issue 19): whatever the user's files, streams and
options, a run ends in success or a one-line error, and never cuts or replaces bytes it did not write.

The runs are in-process, through cli.main, as in test_fuzz_cli.py; the model is loaded once."""
import errno
import fcntl
import io
import json
import os
import subprocess
import sys
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
import cli_files
import utils
from cli_files import Prompt, completion_record
from conftest import REPO_DIR, symlinked_models_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-a"})


@pytest.fixture
def loaded_once(monkeypatch, _model_cache):
    monkeypatch.setattr(utils, "load_encoder_hparams_and_params", _model_cache)


@pytest.fixture(scope="module")
def _model_cache():
    loaded, load_for_real = {}, utils.load_encoder_hparams_and_params

    def load(model_size, models_dir, base_url=None, verify=False):
        if model_size not in loaded:
            loaded[model_size] = load_for_real(model_size, models_dir, base_url, verify)
        return loaded[model_size]

    return load


def run(argv, monkeypatch, stdin=b"", stdout=None):
    """(exit status, stdout bytes, stderr text) of `gpt2.py argv`, as a process would give them.
    stdin or stdout None: that stream is closed, as Python sets it when its descriptor is."""
    streams = {
        "stdin": None if stdin is None else io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
        "stdout": io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True) if stdout is None else stdout,
        "stderr": io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True),
    }
    if stdout == "closed":
        streams["stdout"] = None
    with monkeypatch.context() as patch:
        for name, stream in streams.items():
            patch.setattr(sys, name, stream)
        try:
            cli.main(argv)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=streams["stderr"])  # what the interpreter prints for sys.exit("...")
    out = streams["stdout"]
    out_bytes = out.buffer.getvalue() if isinstance(getattr(out, "buffer", None), io.BytesIO) else b""
    return status, out_bytes, streams["stderr"].buffer.getvalue().decode("utf-8")


def one_line_error(status, stderr):
    return status != 0 and stderr.startswith("gpt2.py: error: ") and stderr.count("\n") == 1


def prompts_run(models_dir, tmp_path, output, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    return ["--models_dir", str(models_dir), "--prompts_file", str(prompts), "--output", str(output),
            "--n_tokens_to_generate", "2", *extra]


# ---------------------------------------------------------------- --output keeps what is not ours


@pytest.mark.parametrize("foreign", [
    b'{"line": 7, "secret": "x"}',  # looks like a cut-off record, but is not this run's
    b'{"line": 1, "prompt": "not this prompt',
    b'{"line": 2, "prompt": "a", "completion": "',  # the right prompt under another line number
    b'{"line": 1, "prompt": "a", "completion": "x", "tokens": [1, 2], "secret": 1}',
])
@pytest.mark.parametrize("through_symlink", [False, True])
def test_output_that_only_looks_cut_off_is_refused_and_kept(foreign, through_symlink, models_dir, tmp_path,
                                                           loaded_once, monkeypatch):
    target = tmp_path / "theirs.jsonl"
    target.write_bytes(foreign)
    output = tmp_path / "link.jsonl" if through_symlink else target
    if through_symlink:
        output.symlink_to(target)
    status, _, stderr = run(prompts_run(models_dir, tmp_path, output), monkeypatch)
    assert one_line_error(status, stderr) and "did not write" in stderr, stderr
    assert target.read_bytes() == foreign


def test_complete_lines_must_be_this_runs_records_byte_for_byte(models_dir, tmp_path, loaded_once, monkeypatch):
    """A line with the right prompt but extra fields (another program's) is not a finished record."""
    before = b'{"line": 1, "prompt": "a", "completion": "", "tokens": [], "mine": true}\n{"line": 2, "pr'
    output = tmp_path / "out.jsonl"
    output.write_bytes(before)
    status, _, stderr = run(prompts_run(models_dir, tmp_path, output), monkeypatch)
    assert one_line_error(status, stderr) and "line 1 is not this run's record" in stderr, stderr
    assert output.read_bytes() == before


def test_a_record_this_run_left_cut_off_is_still_repaired(models_dir, tmp_path, loaded_once, monkeypatch):
    output = tmp_path / "out.jsonl"
    assert run(prompts_run(models_dir, tmp_path, output), monkeypatch)[0] == 0
    finished = output.read_bytes()
    first, second = finished.splitlines(keepends=True)
    for cut in (1, 12, len(second) // 2, len(second) - 1):  # every kind of place a record can be cut
        output.write_bytes(first + second[:cut])
        status, _, stderr = run(prompts_run(models_dir, tmp_path, output), monkeypatch)
        assert status == 0, stderr
        assert output.read_bytes() == finished


def test_every_start_of_a_record_counts_as_cut_off_and_nothing_else():
    from cli_files import could_start_record_of

    prompt = Prompt(3, 'quote " newline \n tick ✓', None)
    record = completion_record(3, prompt.text, 'a "b"\n\\ 😀 \x01', [5, 17, 50256])
    assert all(could_start_record_of(record[:n], prompt) for n in range(1, len(record)))
    assert not could_start_record_of(record[:-1] + b",", prompt)
    assert not could_start_record_of(record[:20], Prompt(4, prompt.text, None))
    assert not could_start_record_of(b'{"line": 3, "secret": "x"}', prompt)


# ---------------------------------------------------------------- what --output may be


def make_target(kind, tmp_path):
    """A path of the given kind, for --output."""
    path = tmp_path / f"target-{kind}"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "missing folder":
        path = tmp_path / "no such folder" / "out.jsonl"
    elif kind == "symlink to a folder":
        (tmp_path / "a folder").mkdir()
        path.symlink_to(tmp_path / "a folder")
    else:  # a device
        return kind
    return str(path)


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling symlink", "missing folder", "symlink to a folder",
                                  "/dev/null", "/dev/zero"])
def test_an_output_that_is_not_a_regular_file_is_refused_before_any_work(kind, models_dir, tmp_path, monkeypatch):
    """A FIFO would block, /dev/zero would be read forever, /dev/null would take the records."""
    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(utils, "load_encoder_hparams_and_params", no_work)
    argv = prompts_run(models_dir, tmp_path, make_target(kind, tmp_path))
    before = sorted(os.listdir(tmp_path))
    status, _, stderr = run(argv, monkeypatch)
    assert one_line_error(status, stderr) and "--output" in stderr, stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_a_second_run_on_the_same_output_fails_at_once_and_changes_nothing(models_dir, tmp_path, loaded_once,
                                                                           monkeypatch):
    """Two runs at once both wrote every record (issue 19): the one that comes second fails rather
    than waits, since it could only repeat or refuse the first one's records."""
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"")
    with open(output, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # what the first run holds while it writes
        status, _, stderr = run(prompts_run(models_dir, tmp_path, output), monkeypatch)
    assert one_line_error(status, stderr) and "being written by another run" in stderr, stderr
    assert output.read_bytes() == b""
    assert run(prompts_run(models_dir, tmp_path, output), monkeypatch)[0] == 0  # released: it goes ahead


def test_two_processes_on_one_output_never_write_a_record_twice(models_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(40)))
    output = tmp_path / "out.jsonl"
    command = [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "--models_dir", str(models_dir), "--prompts_file",
               str(prompts), "--output", str(output), "--n_tokens_to_generate", "20", "--batch_size", "1"]
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models")
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in runs]
    lines = output.read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == 40
    for status, stderr in results:
        assert status == 0 or one_line_error(status, stderr), stderr


def test_a_read_only_output_is_a_one_line_error_and_stays(models_dir, tmp_path, loaded_once, monkeypatch):
    """EROFS is what a read-only file system (or bind mount) answers; root ignores a file's mode bits."""
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"")
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if os.fspath(path) == str(output) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    status, _, stderr = run(prompts_run(models_dir, tmp_path, output), monkeypatch)
    assert one_line_error(status, stderr) and "Read-only file system" in stderr, stderr
    assert output.read_bytes() == b""


class FillsUp:
    """An output file on a disk that fills up after `room` bytes."""

    def __init__(self, raw, room):
        self.raw, self.room, self.name = raw, room, raw.name

    def write(self, data):
        if len(data) > self.room:
            self.raw.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.raw.close()


def test_a_full_disk_keeps_the_records_written_and_a_rerun_finishes(models_dir, tmp_path, loaded_once, monkeypatch):
    output = tmp_path / "out.jsonl"
    argv = prompts_run(models_dir, tmp_path, output, "--batch_size", "1")
    assert run(argv, monkeypatch)[0] == 0
    finished = output.read_bytes()
    output.write_bytes(b"")
    with monkeypatch.context() as patch:
        patch.setattr(cli_files, "open", lambda *a, **k: FillsUp(open(*a, **k), len(finished) - 10), raising=False)
        status, _, stderr = run(argv, monkeypatch)
    assert one_line_error(status, stderr) and "No space left on device" in stderr, stderr
    assert output.read_bytes() == finished[:-10]  # the first record whole, the second cut off
    assert run(argv, monkeypatch)[0] == 0
    assert output.read_bytes() == finished


# ---------------------------------------------------------------- standard streams


class FullDevice(io.RawIOBase):
    def writable(self):
        return True

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("mode", ["prompt", "prompts_file", "score", "info"])
def test_standard_output_on_a_full_device_is_a_one_line_error(mode, models_dir, tmp_path, loaded_once, monkeypatch):
    (tmp_path / "text.txt").write_text("some text to score here")
    (tmp_path / "prompts.txt").write_text("a\n")
    argv = {"prompt": ["x"], "prompts_file": ["--prompts_file", str(tmp_path / "prompts.txt")],
            "score": ["--score", str(tmp_path / "text.txt")], "info": ["--info"]}[mode]
    full = io.TextIOWrapper(io.BufferedWriter(FullDevice()), encoding="utf-8")
    argv = ["--models_dir", str(models_dir), "--n_tokens_to_generate", "3", *argv]
    status, _, stderr = run(argv, monkeypatch, stdout=full)
    if mode in ("score", "info"):  # print() leaves its text in the buffer: the process's exit finds it full
        assert status == 0 or one_line_error(status, stderr), stderr
    else:
        assert one_line_error(status, stderr) and "No space left on device" in stderr, stderr


def test_dev_full_as_standard_output_prints_one_line_and_no_traceback(models_dir):
    command = [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "--models_dir", str(models_dir), "x",
               "--n_tokens_to_generate", "3"]
    with open("/dev/full", "wb") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, timeout=60,
                                env=dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models"))
    stderr = result.stderr.decode()
    assert one_line_error(result.returncode, stderr) and "No space left on device" in stderr, stderr


@pytest.mark.parametrize("argv", [["--score", "-"], ["--prompts_file", "-"]])
def test_a_closed_standard_input_is_a_one_line_error(argv, models_dir, monkeypatch):
    status, _, stderr = run(["--models_dir", str(models_dir), *argv], monkeypatch, stdin=None)
    assert one_line_error(status, stderr) and "standard input is closed" in stderr, stderr


def test_a_closed_standard_output_is_refused_unless_the_records_go_to_output(models_dir, tmp_path, loaded_once,
                                                                             monkeypatch):
    status, _, stderr = run(["--models_dir", str(models_dir), "x"], monkeypatch, stdout="closed")
    assert one_line_error(status, stderr) and "standard output is closed" in stderr, stderr
    output = tmp_path / "out.jsonl"
    status, _, stderr = run(prompts_run(models_dir, tmp_path, output), monkeypatch, stdout="closed")
    assert status == 0, stderr
    assert len(output.read_bytes().splitlines()) == 2


# ---------------------------------------------------------------- text that is not text


@pytest.mark.parametrize("argv", [["a\udcffb"], ["x", "--stop", "\udcff"], ["x", "--stop", r"\ud800"],
                                  ["x", "--stop", r"\U00110000"]])
def test_an_argument_that_is_not_text_is_a_one_line_error(argv, models_dir, monkeypatch):
    """Bytes that are not UTF-8 reach Python's argv as surrogates (surrogateescape)."""
    status, _, stderr = run(["--models_dir", str(models_dir), *argv], monkeypatch)
    assert status == 2 and stderr.startswith("gpt2.py: error: ") and stderr.count("\n") == 1, stderr


@pytest.mark.parametrize("line", [r'{"prompt": "\ud800"}', r'{"prompt": "x", "stop": ["\udfff"]}',
                                  '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", "[" * 100_000],
                         ids=["lone surrogate", "lone surrogate in stop", "deep prompt", "deep record"])
def test_a_jsonl_record_that_is_not_text_is_a_one_line_error(line, models_dir, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(line + "\n")
    status, _, stderr = run(["--models_dir", str(models_dir), "--prompts_file", str(prompts)], monkeypatch)
    assert one_line_error(status, stderr) and "line 1" in stderr, stderr


# ---------------------------------------------------------------- prompts too long to fit


@pytest.mark.parametrize("line", ["word " * 1_000_000, "a" * 5_000_000, "<|endoftext|>" * 400_000],
                         ids=["many words", "one long word", "many added tokens"])
def test_a_huge_prompt_is_refused_without_tokenizing_it(line, models_dir, tmp_path, loaded_once, monkeypatch):
    """5 MB took 22 s to tokenize only to be refused: a bound on its tokens refuses it at once."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(line + "\n")
    encode = cli.Encoder.encode

    def small_only(self, text):
        assert len(text) < 100_000, "a huge prompt was tokenized"
        return encode(self, text)

    monkeypatch.setattr(cli.Encoder, "encode", small_only)
    started = time.perf_counter()
    status, _, stderr = run(["--models_dir", str(models_dir), "--prompts_file", str(prompts)], monkeypatch)
    assert one_line_error(status, stderr) and "context of 32 tokens" in stderr, stderr
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("text", ["word " * 40, "😀" * 9, "<|endoftext|>" * 32, " " * 200, "a" * 4096, "x\n" * 16],
                         ids=["words", "emoji", "added tokens", "spaces", "one long word", "lines"])
def test_the_bound_never_refuses_a_prompt_that_fits(text, models_dir, loaded_once):
    """The bound is a lower bound: wherever it says more than n_ctx, the encoder agrees."""
    encoder = utils.load_encoder_hparams_and_params("124M", str(models_dir))[0]
    longest = max(map(len, encoder.encoder))
    n_tokens = len(encoder.encode(text))
    assert cli_files.lower_bound_of_tokens(encoder, text, longest, 10**9) <= n_tokens
    if n_tokens <= 32:
        cli_files.check_prompts_fit(encoder, [Prompt(1, text, None)], 32, None)


# ---------------------------------------------------------------- option values float32 cannot hold


@pytest.mark.parametrize("option", [["--temperature", "1e-45"], ["--temperature", "1e-38"], ["--temperature", "1e300"],
                                    ["--top_p", "1e-300"], ["--top_p", "1e-45"], ["--repetition_penalty", "1e-45"],
                                    ["--repetition_penalty", "1e300"], ["--frequency_penalty", "1e-45"],
                                    ["--presence_penalty=-1e-45"], ["--temperature", "1e-6"],
                                    ["--temperature", "1e6", "--repetition_penalty", "1e6"],
                                    ["--temperature", "1e-6", "--repetition_penalty", "1e-6", "--top_p", "1e-6"]])
def test_a_value_float32_cannot_hold_is_an_error_or_gives_correct_output(option, models_dir, loaded_once,
                                                                          monkeypatch):
    argv = ["--models_dir", str(models_dir), "Hello there", "--n_tokens_to_generate", "3", "--seed", "1", *option]
    if "--temperature" not in option:
        argv += ["--temperature", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # overflow, or 0 / 0: NaN probabilities
        status, stdout, stderr = run(argv, monkeypatch)
    assert status == 0 or (status == 2 and "out of range" in stderr and stderr.count("\n") == 1), stderr


# ---------------------------------------------------------------- the same, generated (hypothesis)


TARGETS = ["new", "empty", "foreign", "foreign torn", "own finished", "own torn", "folder", "fifo", "/dev/null",
           "/dev/zero", "symlink", "dangling symlink", "missing folder", "read-only", "full"]
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
RECORDS = st.one_of(
    st.builds(lambda p: {"prompt": p}, TEXT),
    st.builds(lambda p, s: {"prompt": p, "stop": s}, TEXT, st.lists(TEXT, max_size=2)),
    st.sampled_from([{"prompt": 3}, [], None, "x", {"text": "x"}, {"prompt": "x", "stop": "y"}]),
).map(lambda record: json.dumps(record, ensure_ascii=False))
LINES = st.one_of(RECORDS, RECORDS, st.sampled_from([r'{"prompt": "\ud800"}', r'{"prompt": "a\udc80b"}',
                                                     "[" * 5000, '{"prompt": "' + "w " * 20_000 + '"}', "{", ""]))


def write_target(kind, folder, finished):
    """The --output path of the given kind, and what it held before (None: not a file of its own)."""
    contents = {"empty": b"", "foreign": b'{"line": 1, "secret": "x"}\n', "foreign torn": b'{"line": 1, "secret"',
                "own finished": finished, "own torn": finished[: len(finished) // 2]}
    if kind in contents:
        path = folder / "out.jsonl"
        path.write_bytes(contents[kind])
        return str(path), contents[kind]
    if kind == "symlink":
        (folder / "real.jsonl").write_bytes(finished)
        (folder / "out.jsonl").symlink_to(folder / "real.jsonl")
        return str(folder / "out.jsonl"), finished
    if kind in ("new", "read-only", "full"):
        return str(folder / "out.jsonl"), None
    return make_target(kind, folder), None


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder) if (folder / name).is_file()}


@st.composite
def hostile_runs(draw):
    return draw(st.sampled_from(TARGETS)), draw(st.lists(LINES, min_size=1, max_size=4)), draw(st.integers(0, 400))


def check_hostile_run(case, models_dir, folder, finished_for, monkeypatch):
    kind, lines, room = case
    prompts = folder / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    output, before = write_target(kind, folder, finished_for(prompts))
    untouched = {name: data for name, data in snapshot(folder).items() if name not in ("out.jsonl", "real.jsonl")}
    argv = ["--models_dir", str(models_dir), "--prompts_file", str(prompts), "--output", output,
            "--n_tokens_to_generate", "2"]
    with monkeypatch.context() as patch:
        if kind == "read-only":
            patch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
        if kind == "full":
            patch.setattr(cli_files, "open", lambda *a, **k: FillsUp(open(*a, **k), room), raising=False)
        status, _, stderr = run(argv, monkeypatch)
    assert status == 0 or one_line_error(status, stderr), (kind, lines, stderr)
    assert "Traceback" not in stderr
    after = snapshot(folder)
    assert {name: data for name, data in after.items() if name in untouched} == untouched
    if before is not None:
        written = after.get("real.jsonl", after.get("out.jsonl"))
        kept = before[: before.rfind(b"\n") + 1] if kind == "own torn" else before
        assert written.startswith(kept), (kind, before, written)
        if kind.startswith("foreign"):
            assert written == before


@pytest.fixture
def finished_for(models_dir, tmp_path_factory, monkeypatch):
    """What a whole run writes for a prompts file, or b"" if it fails (e.g. refuses the file)."""
    def finished(prompts):
        output = tmp_path_factory.mktemp("finished") / "out.jsonl"
        argv = ["--models_dir", str(models_dir), "--prompts_file", str(prompts), "--output", str(output),
                "--n_tokens_to_generate", "2"]
        return output.read_bytes() if run(argv, monkeypatch)[0] == 0 else b""

    return finished


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=hostile_runs())
def test_any_output_target_and_records_end_in_success_or_one_line(case, models_dir, tmp_path_factory, loaded_once,
                                                                 finished_for, monkeypatch):
    check_hostile_run(case, models_dir, tmp_path_factory.mktemp("hostile"), finished_for, monkeypatch)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=hostile_runs())
def test_any_output_target_and_records_longer(case, models_dir, tmp_path_factory, loaded_once, finished_for,
                                              monkeypatch):
    check_hostile_run(case, models_dir, tmp_path_factory.mktemp("hostile"), finished_for, monkeypatch)
