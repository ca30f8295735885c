"""The command line, run as a user runs it: `python gpt2.py ...` in a subprocess.

The fixture models stand in for OpenAI's: <models_dir>/124M is tiny-a and <models_dir>/355M is
tiny-b, so no test downloads anything (GPT2_BASE_URL points at a closed local port besides).
"""
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import cli
import gpt2
import reference
from conftest import REPO_DIR, RecordingStream, load_fixture, run_on_terminal, symlinked_models_dir, token_events
from encoder import get_encoder

SIZES = {"124M": "tiny-a", "355M": "tiny-b"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, SIZES)


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("tiny-a", reference.FIXTURES_DIR)


def run_cli(*args, script="gpt2.py"):
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, script), *map(str, args)],
        capture_output=True, env=env, timeout=120, cwd=REPO_DIR,
    )


def expected_greedy_text(encoder, size, prompt, n_new):
    """What generation in-process gives (itself checked against transformers in test_model.py)."""
    hparams, params = load_fixture(SIZES[size])
    tokens = gpt2.generate(encoder.encode(prompt) or [encoder.eot_token], params, hparams["n_head"], n_new)
    assert encoder.eot_token not in tokens, "pick another prompt: this one stops early at <|endoftext|>"
    return encoder.decode(tokens)


@pytest.mark.parametrize("size", SIZES)
def test_cli_prints_transformers_greedy_continuation(models_dir, encoder, size):
    with np.load(reference.REFERENCE_FILE) as data:
        expected_tokens = data[f"{SIZES[size]}/cli_tokens"].tolist()
    assert encoder.eot_token not in expected_tokens
    result = run_cli(reference.CLI_PROMPT, "--n_tokens_to_generate", len(expected_tokens),
                     "--model_size", size, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == encoder.decode(expected_tokens).encode("utf-8")


def test_pico_cli_prints_the_same_continuation(models_dir, encoder):
    expected = expected_greedy_text(encoder, "124M", reference.CLI_PROMPT, 12)
    result = run_cli(reference.CLI_PROMPT, 12, "124M", models_dir, script="gpt2_pico.py")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == expected + "\n"


@pytest.mark.parametrize("prompt", ["42", "None", "True", "[1, 2]", "{x}", "1e3", "'quoted'", "  two  spaces "])
def test_prompt_reaches_the_tokenizer_exactly_as_typed(models_dir, encoder, prompt):
    """python-fire would turn these into int, None, bool, list, set...: the CLI must not."""
    assert cli.parse_args([prompt]).prompt == prompt
    result = run_cli(prompt, "--n_tokens_to_generate", 5, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == expected_greedy_text(encoder, "124M", prompt, 5)


def test_prompt_starting_with_a_dash_goes_after_double_dash(models_dir, encoder):
    result = run_cli("--n_tokens_to_generate", 5, "--models_dir", models_dir, "--", "-1 is a number")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == expected_greedy_text(encoder, "124M", "-1 is a number", 5)


def test_empty_prompt_generates_from_endoftext(models_dir, encoder):
    hparams, params = load_fixture("tiny-a")
    expected = encoder.decode(gpt2.generate([encoder.eot_token], params, hparams["n_head"], 6))
    result = run_cli("", "--n_tokens_to_generate", 6, "--models_dir", models_dir, "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == expected


def test_literal_endoftext_in_a_prompt_is_the_special_token(models_dir):
    """encoder.encode maps the text <|endoftext|> to token 50256, so it starts a new document."""
    alone = run_cli("<|endoftext|>", "--n_tokens_to_generate", 6, "--models_dir", models_dir, "--ignore_eos")
    empty = run_cli("", "--n_tokens_to_generate", 6, "--models_dir", models_dir, "--ignore_eos")
    assert alone.returncode == 0 and alone.stdout == empty.stdout


def test_prompt_plus_new_tokens_equal_to_n_ctx_works(models_dir, encoder):
    n_prompt = len(encoder.encode(reference.CLI_PROMPT))
    result = run_cli(reference.CLI_PROMPT, "--n_tokens_to_generate", 32 - n_prompt, "--models_dir", models_dir,
                     "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()


def one_line_error(result):
    """A failed run: non-zero exit, nothing on stdout, exactly one line on stderr, no traceback."""
    stderr = result.stderr.decode("utf-8")
    assert result.returncode != 0
    assert result.stdout == b""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_size", "125M"], "invalid choice: '125M'"),
        (["--model_size", "../x"], "invalid choice: '../x'"),
        (["--n_tokens_to_generate", "0"], "--n_tokens_to_generate: invalid positive_int value: '0'"),
        (["--n_tokens_to_generate", "-3"], "--n_tokens_to_generate"),
        (["--n_tokens_to_generate", "abc"], "invalid positive_int value: 'abc'"),
        (["--n_tokens_to_generate", "1.5"], "invalid positive_int value: '1.5'"),
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--top_p", "-0.1"], "--top_p"),
        (["--temperature", "2.5"], "--temperature"),
        (["--top_p", "1.5"], "--top_p"),
        (["--top_k", "-1"], "--top_k"),
        (["--show_probs", "-2"], "--show_probs"),
        (["--threads", "0"], "--threads"),
        (["--no_such_option"], "unrecognized arguments"),
    ],
)
def test_bad_option_is_a_one_line_error(models_dir, args, message):
    stderr = one_line_error(run_cli("hello", "--models_dir", models_dir, *args))
    assert message in stderr


def test_missing_prompt_is_a_one_line_error():
    assert "prompt" in one_line_error(run_cli())


def test_too_long_prompt_is_a_one_line_error_before_any_work(models_dir):
    stderr = one_line_error(run_cli("word " * 40, "--models_dir", models_dir))
    assert "context of 32 tokens" in stderr


def test_generating_past_n_ctx_goes_on_and_says_so_once(models_dir, encoder):
    result = run_cli(reference.CLI_PROMPT, "--n_tokens_to_generate", 100, "--models_dir", models_dir, "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    assert len(encoder.encode(result.stdout.decode("utf-8"))) >= 90  # round trips may merge a few tokens
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1 and "context window (32 tokens) is full" in stderr and "last 16 tokens" in stderr


def test_missing_models_dir_is_a_one_line_error(tmp_path):
    stderr = one_line_error(run_cli("hello", "--models_dir", tmp_path / "no_such_dir"))
    assert "no_such_dir" in stderr
    assert not (tmp_path / "no_such_dir").exists()


def test_models_dir_that_is_a_file_is_a_one_line_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    one_line_error(run_cli("hello", "--models_dir", a_file))
    assert a_file.read_text() == "keep me"


def directory_digest(path):
    """The MD5 of every file but the tool's own hidden bookkeeping (.download.lock, .verified.json)."""
    names = sorted(name for name in os.listdir(path) if not name.startswith("."))
    return {name: hashlib.md5((path / name).read_bytes()).hexdigest() for name in names}


def test_missing_model_files_are_a_one_line_error_and_nothing_is_deleted(copied_model_dir):
    (copied_model_dir / "model.ckpt.meta").unlink()
    before = directory_digest(copied_model_dir)
    stderr = one_line_error(run_cli("hello", "--models_dir", copied_model_dir.parent))
    assert "model.ckpt.meta" in stderr  # the URL it tried
    assert directory_digest(copied_model_dir) == before


@pytest.mark.parametrize("name, damage", [("model.ckpt.index", "flip"), ("model.ckpt.data-00000-of-00001", "truncate"),
                                          ("hparams.json", "truncate"), ("encoder.json", "truncate"),
                                          ("vocab.bpe", "flip")])
def test_corrupt_model_file_is_a_one_line_error_naming_it_and_moved_aside_intact(copied_model_dir, name, damage):
    """A downloaded file that fails its checks is renamed to <name>.damaged (never changed or deleted), so
    that the next run downloads it anew."""
    path = copied_model_dir / name
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    before = directory_digest(copied_model_dir)
    stderr = one_line_error(run_cli("hello", "--models_dir", copied_model_dir.parent))
    assert name in stderr
    after = {file.removesuffix(".damaged"): digest for file, digest in directory_digest(copied_model_dir).items()}
    assert after == before


def test_help_shows_every_option_with_its_default():
    result = run_cli("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for option, default in [("--n_tokens_to_generate", "40"), ("--model_size", "124M"), ("--temperature", "0.0"),
                            ("--top_k", "0"), ("--top_p", "1.0"), ("--seed", "None"), ("--show_probs", "0")]:
        assert option in text
        assert f"(default: {default})" in text, option


def test_same_seed_gives_the_same_sample_on_every_run(models_dir):
    args = ["Once upon a time", "--n_tokens_to_generate", 10, "--models_dir", models_dir, "--temperature", "1.0",
            "--top_k", "40", "--seed", "123", "--ignore_eos"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0 and first.stdout == second.stdout


def test_show_probs_prints_one_line_per_step_on_stderr_and_leaves_stdout_alone(models_dir):
    plain = run_cli("Hello", "--n_tokens_to_generate", 4, "--models_dir", models_dir)
    shown = run_cli("Hello", "--n_tokens_to_generate", 4, "--models_dir", models_dir, "--show_probs", 3)
    assert shown.returncode == 0 and shown.stdout == plain.stdout
    lines = shown.stderr.decode("utf-8").splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"step {i + 1:>4}: chose ") and line.count("%") == 4 for i, line in enumerate(lines))


def test_show_probs_lists_the_top_k_in_descending_order_with_the_greedy_pick_first(models_dir, encoder):
    """Checked against the model's own logits, recomputed in-process: each row's candidates are the
    K most likely tokens, most likely first, and a greedy pick is the first of them. The fixture's
    distribution is nearly flat, so the token texts are compared, not the rounded percentages."""
    k, n_new = 4, 5
    result = run_cli("Hello", "--n_tokens_to_generate", n_new, "--models_dir", models_dir, "--show_probs", k,
                     "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    hparams, params = load_fixture("tiny-a")
    steps = gpt2.generate_steps(encoder.encode("Hello"), params, hparams["n_head"], n_new)
    for line, (token, logits) in zip(result.stderr.decode("utf-8").splitlines(), steps, strict=True):
        top = np.argsort(-logits, kind="stable")[:k]
        chosen, candidates = line.split("  | ")
        assert chosen.startswith("step") and f"chose {cli.token_repr(encoder, token)} (" in chosen, line
        expected = [cli.token_repr(encoder, t) for t in top]
        shown = [cell.rsplit(" ", 1)[0] for cell in candidates.split("  ")]
        assert shown == expected, f"candidates {shown}, expected the top {k} {expected}"
        assert top[0] == token, "under greedy decoding the first candidate is the chosen token"
        percents = [float(cell.rsplit(" ", 1)[1].rstrip("%")) for cell in candidates.split("  ")]
        assert percents == sorted(percents, reverse=True), f"not in descending order: {percents}"


def test_threads_option_gives_the_same_output(models_dir):
    default = run_cli("Hello", "--n_tokens_to_generate", 5, "--models_dir", models_dir)
    one_thread = run_cli("Hello", "--n_tokens_to_generate", 5, "--models_dir", models_dir, "--threads", 1)
    assert one_thread.returncode == 0 and one_thread.stdout == default.stdout


# ---- streaming, in-process: what stream_continuation writes, write by write


@pytest.mark.parametrize("text", ["😀 ok", "日本語のテキスト", "flags 🇯🇵🇫🇷 and 👩‍👩‍👧", "é, ñ, ü", "plain ascii"])
def test_streaming_writes_whole_characters_only_and_exactly_the_text(encoder, text):
    tokens = encoder.encode(text)
    out, err = RecordingStream(), io.StringIO()
    cli.stream_continuation(encoder, token_events(encoder, tokens, encoder.eot_token), 0, out, err)
    assert out.getvalue() == text.encode("utf-8")
    for piece in out.writes:
        assert "\ufffd" not in piece.decode("utf-8")  # each write is valid UTF-8 on its own
    assert sum(1 for piece in out.writes if piece) >= len(text.encode()) // 4  # written as it goes, not at the end


def test_a_split_character_is_written_once_complete(encoder):
    tokens = encoder.encode("😀")
    assert len(tokens) > 1, "the emoji must span several tokens for this test"
    out = RecordingStream()
    cli.stream_continuation(encoder, token_events(encoder, tokens, None), 0, out, io.StringIO())
    assert [piece for piece in out.writes if piece] == ["😀".encode("utf-8")]


def test_a_character_cut_off_by_the_last_token_is_flushed_as_a_replacement_character(encoder):
    """The incremental decoder holds back an incomplete character; at the end it must still be
    written, as U+FFFD, exactly as encoder.decode renders the same tokens."""
    tokens = encoder.encode("ok 😀")[:-1]  # the emoji's last byte(s) never arrive
    assert encoder.decode(tokens).endswith("\ufffd")
    out = RecordingStream()
    cli.stream_continuation(encoder, token_events(encoder, tokens, None), 0, out, io.StringIO())
    assert out.getvalue().decode("utf-8") == encoder.decode(tokens), "the held-back bytes were not flushed"


def test_streaming_stops_at_endoftext_without_printing_it(encoder):
    tokens = encoder.encode("Hello") + [encoder.eot_token] + encoder.encode(" more")
    out = RecordingStream()
    cli.stream_continuation(encoder, token_events(encoder, tokens, encoder.eot_token), 0, out, io.StringIO())
    assert out.getvalue() == b"Hello"


def test_ignore_eos_streams_past_endoftext(encoder):
    tokens = encoder.encode("Hello") + [encoder.eot_token] + encoder.encode(" more")
    out = RecordingStream()
    cli.stream_continuation(encoder, token_events(encoder, tokens, None), 0, out, io.StringIO())
    assert out.getvalue() == b"Hello<|endoftext|> more"


def test_show_probs_on_one_terminal_prints_the_rows_then_the_text(models_dir):
    """Streamed text between the rows would break them, so on a terminal the text follows them."""
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models")
    command = [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "Hello", "--n_tokens_to_generate", "3",
               "--models_dir", str(models_dir), "--show_probs", "2"]
    status, _, screen = run_on_terminal(command, env, stdout_too=True)
    assert status == 0
    lines = screen.replace("\r\n", "\n").split("\n")
    assert [line.startswith(f"step    {i}: chose ") for i, line in enumerate(lines[:3], 1)] == [True] * 3
    plain = run_cli("Hello", "--n_tokens_to_generate", 3, "--models_dir", models_dir)
    assert lines[3] == plain.stdout.decode("utf-8")


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option_sets_the_blas_thread_count(models_dir, threads):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cli; from threadpoolctl import threadpool_info; "
        f"cli.main(['Hi', '--n_tokens_to_generate', '2', '--models_dir', sys.argv[2], '--threads', '{threads}']); "
        "print(sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}), file=sys.stderr)"
    )
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models")
    result = subprocess.run([sys.executable, "-c", script, REPO_DIR, str(models_dir)],
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().strip().splitlines()[-1] == f"[{threads}]"
