"""Hostile files and streams on the command line (issue 19): whatever the user's files, streams and
options, a run ends in success or a one-line error, and never cuts or replaces bytes it did not write.

The runs are in-process, through cli.main, as in test_fuzz_cli.py; the model is loaded once."""
import io
import sys

import pytest

import cli
import utils
from cli_files import Prompt, completion_record
from conftest import symlinked_models_dir


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
    out_bytes = out.buffer.getvalue() if isinstance(out, io.TextIOWrapper) and not out.closed else b""
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
