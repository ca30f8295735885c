"""The command line driven with random option combinations and random file contents (hypothesis).

Every run must end with exit status 0 or a one-line error, never a traceback, and must never change
an existing --output file except by appending complete records (after dropping a record an earlier
run left cut off, which is how resuming repairs the file).

The runs are in-process, through cli.main with stdin, stdout and stderr replaced, so that hundreds
of runs take seconds: an exception escaping cli.main is exactly what would print a traceback in a
real process, and argparse's and sys.exit's messages are collected as a process would print them.
The model is loaded once (the loader is tested on its own in test_checkpoint.py and test_encoder.py).
"""
import io
import json
import os
import sys

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cli
import utils
from conftest import symlinked_models_dir

PROMPT_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
FILE_BYTES = st.one_of(
    st.binary(max_size=300),  # anything: invalid UTF-8, NUL bytes, ...
    st.lists(st.text(max_size=30), max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.lists(st.one_of(st.builds(lambda p: json.dumps({"prompt": p}), st.text(max_size=20)),
                       st.sampled_from(['{"prompt": 3}', "[]", "{", '{"text": "x"}', "null", '"a"'])),
             max_size=5).map(lambda lines: "\n".join(lines).encode()),
    st.just(b"x" * 5000 + b"\n"),  # a huge line
)
SMALL = st.integers(1, 6).map(str)
NUMBER = st.one_of(SMALL, SMALL, SMALL, st.integers(-3, 70).map(str),  # mostly valid, so that runs get far
                   st.sampled_from(["nan", "inf", "-0", "1.5", "1e3", "", "x"]))
OPTIONS = {
    "--n_tokens_to_generate": NUMBER,
    "--temperature": NUMBER,
    "--top_k": NUMBER,
    "--top_p": st.sampled_from(["0.5", "0.9", "1", "0", "1.5", "nan"]),
    "--seed": NUMBER,
    "--show_probs": NUMBER,
    "--batch_size": NUMBER,
    "--stride": NUMBER,
    "--model_size": st.sampled_from(["124M", "355M", "124M", "355M", "1558M", "12"]),
}
FLAGS = ["--ignore_eos", "--json", "--verify"]
OUTPUT_BEFORE = st.sampled_from([None, b"", b"garbage without newline", b'{"line": 1, "prompt": "cut',
                                 b"not ours\n", b'{"line": 1, "prompt": "a", "completion": "", "tokens": []}\n'])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-a", "355M": "tiny-b"})


@pytest.fixture(scope="module")
def load_once():
    loaded, load_for_real = {}, utils.load_encoder_hparams_and_params

    def load(model_size, models_dir, base_url=None, verify=False):
        if model_size not in loaded:
            loaded[model_size] = load_for_real(model_size, models_dir, base_url, verify)
        return loaded[model_size]

    return load


class Console:
    """sys.stdin/stdout/stderr stand-ins with the .buffer the CLI writes bytes to."""

    def __init__(self, stdin=b""):
        self.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        self.stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
        self.stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace",
                                       write_through=True)

    def text(self, stream):
        stream.flush()
        return stream.buffer.getvalue()


def run_in_process(argv, stdin, monkeypatch):
    """(exit status, stdout bytes, stderr text) of `gpt2.py argv`, as a process would give them."""
    console = Console(stdin)
    with monkeypatch.context() as patch:
        for name in ("stdin", "stdout", "stderr"):
            patch.setattr(sys, name, getattr(console, name))
        try:
            cli.main(argv)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=console.stderr)  # what the interpreter prints for sys.exit("...")
    return status, console.text(console.stdout), console.text(console.stderr).decode("utf-8")


def records_appended(before, after):
    """True if `after` is `before` followed by complete JSON Lines records; a cut-off last record
    (a last line without its newline that starts as this tool's records do) may have been dropped."""
    if after == before:
        return True
    cut_off = before[before.rfind(b"\n") + 1 :]
    kept = before[: len(before) - len(cut_off)] if cut_off.startswith(b'{"line": ') else before
    if not after.startswith(kept):
        return False
    added = after[len(kept) :]
    return added.endswith(b"\n") and all(isinstance(json.loads(line).get("line"), int) for line in added.splitlines())


def fits(option, mode):
    """Whether `option` goes with the mode (the CLI refuses the others, which the fuzzer tries too)."""
    only = {"--json": ("score", "score_stdin"), "--stride": ("score", "score_stdin"), "--show_probs": ("prompt",),
            "--output": ("prompts_file", "jsonl"), "--batch_size": ("prompts_file", "jsonl")}
    return mode in only.get(option, (mode,))


@st.composite
def command_lines(draw, folder):
    argv, files = [], {}
    modes = ["prompt"] * 3 + ["prompts_file", "jsonl"] * 2 + ["score", "score_stdin", "none", "two"]
    mode = draw(st.sampled_from(modes))
    if mode in ("prompts_file", "jsonl", "two"):
        path = os.path.join(folder, "prompts.jsonl" if mode == "jsonl" else "prompts.txt")
        files[path] = draw(FILE_BYTES)
        argv = ["--prompts_file", path] + argv
    if mode == "score":
        path = os.path.join(folder, "text.txt")
        files[path] = draw(FILE_BYTES)
        argv += ["--score", path]
    if mode == "score_stdin":
        argv += ["--score", "-"]
    anything = draw(st.integers(0, 5)) == 0  # one run in six mixes options that do not go together
    fitting = [option for option in sorted(OPTIONS) + FLAGS if anything or fits(option, mode)]
    for option in draw(st.lists(st.sampled_from(fitting), max_size=3, unique=True)):
        argv += [option, draw(OPTIONS[option])] if option in OPTIONS else [option]
    if "--n_tokens_to_generate" not in argv:  # the default, 40, exceeds tiny-a's context (32)
        argv += ["--n_tokens_to_generate", draw(SMALL)]
    output_before = draw(OUTPUT_BEFORE)
    if (anything or fits("--output", mode)) and draw(st.booleans()):
        argv += ["--output", os.path.join(folder, "out.jsonl")]
    if mode in ("prompt", "two"):  # last, since after "--" everything is the prompt
        argv += ["--", draw(PROMPT_TEXT)] if draw(st.booleans()) else [draw(PROMPT_TEXT)]
    stdin = draw(FILE_BYTES) if mode == "score_stdin" else b""
    return argv, files, output_before, stdin


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_command_line_ends_in_success_or_a_one_line_error(data, models_dir, load_once, tmp_path_factory,
                                                             monkeypatch):
    folder = tmp_path_factory.mktemp("fuzz")
    argv, files, output_before, stdin = data.draw(command_lines(str(folder)))
    for path, content in files.items():
        with open(path, "wb") as f:
            f.write(content)
    output = folder / "out.jsonl"
    if output_before is not None:
        output.write_bytes(output_before)
    monkeypatch.setattr(utils, "load_encoder_hparams_and_params", load_once)
    argv = ["--models_dir", str(models_dir), *argv]

    status, _, stderr = run_in_process(argv, stdin, monkeypatch)
    event(f"exit status {status}")  # pytest --hypothesis-show-statistics shows the mix

    if status != 0:
        assert stderr.endswith("\n") and stderr.count("\n") == 1, (argv, stderr)
        assert stderr.startswith("gpt2.py: error: "), (argv, stderr)
    assert "Traceback" not in stderr
    if output_before is not None:
        assert records_appended(output_before, output.read_bytes()), (argv, output_before, output.read_bytes())


def test_the_fuzzer_sees_a_traceback_as_a_failure(monkeypatch):
    """Guards the property above: an exception escaping cli.main is not taken for an error message."""
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "run", broken)
    with pytest.raises(RuntimeError):
        run_in_process(["hello"], b"", monkeypatch)


def test_the_fuzzer_reads_an_error_as_a_process_prints_it(monkeypatch, models_dir):
    status, stdout, stderr = run_in_process(["--n_tokens_to_generate", "0", "x"], b"", monkeypatch)
    assert status == 2 and stdout == b"" and stderr.startswith("gpt2.py: error: argument --n_tokens_to_generate")
    status, _, stderr = run_in_process(["x", "--models_dir", str(models_dir / "nope")], b"", monkeypatch)
    assert status == 1 and stderr.startswith("gpt2.py: error: --models_dir") and stderr.count("\n") == 1

