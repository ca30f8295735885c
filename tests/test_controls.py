"""Generation controls: repetition, frequency and presence penalties; stop texts; going past n_ctx.

Penalties are checked against transformers (repetition) and against a direct float64 computation
(OpenAI's frequency and presence). The context shift is checked against its plain definition: at
each shift, generation restarts from the kept tokens as a new prompt.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cli
import gpt2
import reference
import sampling
from conftest import REPO_DIR, RecordingStream, engine_completions, load_fixture, symlinked_models_dir, token_events
from encoder import get_encoder
from stop_text import StopWatcher, cut_at_stop, parse_escapes

ENV = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("tiny-a", reference.FIXTURES_DIR)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-a", "355M": "tiny-b"})


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)],
                          capture_output=True, env=ENV, timeout=120)


# ---------------------------------------------------------------- penalties


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_ids():
    logits = np.array([2.0, -2.0, 0.0, 3.0, -1.0], dtype=np.float32)
    sampling.repetition_penalty(logits, np.array([0, 1, 2]), 1.25)
    assert logits.dtype == np.float32
    expected = np.array([2.0 / 1.25, -2.0 * 1.25, 0.0, 3.0, -1.0], dtype=np.float32)  # 3 and 4 were not seen
    assert logits.tolist() == expected.tolist()


def test_frequency_and_presence_penalties_equal_the_float64_definition():
    """logit -= count * F + (count > 0) * P over the generated tokens only (not the prompt):
    float32 against float64, 1e-5 absolute on logits of size ~3."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(300).astype(np.float32) * 3
    prompt = [5, 6, 7]
    generated = rng.integers(0, 40, 60).tolist()
    chooser = sampling.Chooser(frequency=0.7, presence=-0.4, prompt=prompt)
    for token in generated:
        chooser.remember(token)
    ours = logits.copy()
    chooser.penalize(ours)
    counts = np.bincount(generated, minlength=300).astype(np.float64)
    expected = logits.astype(np.float64) - counts * 0.7 - (counts > 0) * -0.4
    assert ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-5


def test_penalties_off_is_plain_argmax_with_no_extra_work():
    assert sampling.make_picker() is np.argmax


def greedy_with_penalty(name, prompt, n_new, penalty):
    hparams, params = load_fixture(name)
    pick = sampling.make_picker(repetition=penalty, prompt=prompt)
    return gpt2.generate(prompt, params, hparams["n_head"], n_new, pick)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_greedy_with_repetition_penalty_equals_stored_transformers_generate(fixture_name, penalty):
    with np.load(reference.REFERENCE_FILE) as data:
        prompt = data[f"{fixture_name}/repetition_prompt"].tolist()
        expected = data[f"{fixture_name}/repetition_tokens_{penalty}"].tolist()
    assert greedy_with_penalty(fixture_name, prompt, len(expected), penalty) == expected


@pytest.mark.parametrize("penalty", [1.2, 2.0])
def test_greedy_with_repetition_penalty_equals_live_transformers_generate(fixture_name, penalty):
    pytest.importorskip("torch", reason="the live comparison needs torch==2.13.0 and transformers")
    pytest.importorskip("transformers", reason="the live comparison needs transformers")
    import utils

    hparams = reference.read_hparams(reference.fixture_dir(fixture_name))
    model = reference.hf_model(hparams, utils.map_checkpoint_tensors(reference.fixture_dir(fixture_name), hparams))
    prompt = reference.reference_tokens(hparams["n_vocab"], 4, seed=21)
    n_new = hparams["n_ctx"] - len(prompt)
    expected = reference.hf_greedy(model, prompt, n_new, repetition_penalty=penalty)
    ours = greedy_with_penalty(fixture_name, prompt, n_new, penalty)
    assert ours == expected
    assert ours != greedy_with_penalty(fixture_name, prompt, n_new, 1.0), "the penalty should change the output"


def test_a_repetition_penalty_stops_greedy_repeating_itself(encoder):
    """The point of the option: with R = 1.2 (transformers' maintainers' advice) fewer tokens repeat."""
    prompt = encoder.encode("The The The The")
    plain = greedy_with_penalty("tiny-a", prompt, 25, 1.0)
    penalised = greedy_with_penalty("tiny-a", prompt, 25, 1.2)
    assert len(set(penalised)) > len(set(plain))


def test_each_prompt_of_a_batch_keeps_its_own_penalty_counts(encoder):
    hparams, params = load_fixture("tiny-b")
    prompts = [encoder.encode(text) for text in ("Hi there", "A much longer prompt than the first one", "x")]
    batched = engine_completions(prompts, params, hparams["n_head"], 20, repetition_penalty=1.5,
                                 frequency_penalty=0.5, presence_penalty=0.5)
    for prompt, tokens in zip(prompts, batched):
        alone = sampling.make_picker(repetition=1.5, frequency=0.5, presence=0.5, prompt=prompt)
        assert tokens == gpt2.generate(prompt, params, hparams["n_head"], 20, alone)


# ---------------------------------------------------------------- stop texts


def feed_in_pieces(stops, pieces):
    watcher = StopWatcher(stops)
    out = [watcher.feed(piece) for piece in pieces]
    return out, watcher


def test_a_stop_text_split_across_pieces_is_found_and_not_printed():
    out, watcher = feed_in_pieces(["END"], ["Hello E", "N", "D and more"])
    assert "".join(out) == "Hello " and watcher.stopped


def test_a_stop_text_may_start_in_the_middle_of_a_piece():
    out, watcher = feed_in_pieces(["\n\n"], ["one\n", "\ntwo"])
    assert "".join(out) == "one" and watcher.stopped


def test_only_text_that_could_still_become_a_stop_text_is_held_back():
    out, watcher = feed_in_pieces(["END"], ["Hello E", "x", " world"])
    assert out == ["Hello ", "Ex", " world"]  # "E" waited for one piece, then went out at once
    assert not watcher.stopped and watcher.finish() == ""


def test_held_text_is_printed_when_the_text_ends_without_a_stop():
    out, watcher = feed_in_pieces(["END"], ["the E", "N"])
    assert out == ["the ", ""] and watcher.finish() == "EN"


def test_the_earliest_of_several_stop_texts_wins():
    assert cut_at_stop("a; b. c", [".", ";"]) == ("a", True)
    assert cut_at_stop("aaab", ["aab"]) == ("a", True)  # overlapping start


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\nc", max_size=30), stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3),
       min_size=1, max_size=3), cuts=st.lists(st.integers(0, 30), max_size=8))
def test_pieces_printed_equal_the_text_cut_before_its_first_stop_text(text, stops, cuts):
    """However the text is split, what is printed is exactly the text before the earliest stop text."""
    bounds = sorted({0, len(text), *[min(cut, len(text)) for cut in cuts]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    out, watcher = feed_in_pieces(stops, pieces)
    first = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=None)
    printed = "".join(out) + watcher.finish()
    assert printed == (text if first is None else text[:first])
    assert watcher.stopped == (first is not None)


@pytest.mark.parametrize("option, text", [(r"\n", "\n"), (r"\n\n", "\n\n"), (r"a\tb", "a\tb"), (r"\\n", "\\n"),
                                          (r"\x41\u00e9", "Aé"), ("plain", "plain"), ("ü", "ü")])
def test_stop_option_understands_escapes(option, text):
    assert parse_escapes(option) == text


def test_streaming_stops_at_a_stop_text_spanning_tokens_and_prints_what_came_before(encoder):
    text = "Hello world. The end"
    tokens = encoder.encode(text)
    out = RecordingStream()
    cli.stream_continuation(encoder, token_events(encoder, tokens, None, ["ld. Th"]), 0, out, io.StringIO())
    assert out.getvalue() == b"Hello wor"
    assert b"Hello" in out.writes[0], "text that cannot start the stop text goes out at once"


def test_the_cli_stops_at_a_stop_text_taken_from_the_middle_of_the_greedy_continuation(models_dir, encoder):
    full = run_cli(reference.CLI_PROMPT, "--n_tokens_to_generate", 20, "--models_dir", models_dir,
                   "--ignore_eos").stdout.decode("utf-8")
    stop = full[7:11]
    assert stop.strip() and full.find(stop) == 7
    result = run_cli(reference.CLI_PROMPT, "--n_tokens_to_generate", 20, "--models_dir", models_dir, "--ignore_eos",
                     "--stop", "zzz-never", "--stop", stop)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == full[:7]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_prompts_file_stops_each_record_at_its_own_or_the_options_stop_texts(models_dir, tmp_path):
    prompts = ["Once upon a time", "The meaning of life is", "Hello"]
    plain_file = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": p} for p in prompts])
    plain = [json.loads(line) for line in run_cli("--prompts_file", plain_file, "--n_tokens_to_generate", 12,
                                                  "--models_dir", models_dir, "--ignore_eos").stdout.splitlines()]
    own_stop = plain[1]["completion"][3:6]
    option_stop = plain[0]["completion"][5:8]
    records = [{"prompt": prompts[0]}, {"prompt": prompts[1], "stop": [own_stop]}, {"prompt": prompts[2], "stop": []}]
    stopped_file = write_jsonl(tmp_path / "stopped.jsonl", records)
    result = run_cli("--prompts_file", stopped_file, "--n_tokens_to_generate", 12, "--models_dir", models_dir,
                     "--ignore_eos", "--stop", option_stop)
    assert result.returncode == 0, result.stderr.decode()
    stopped = [json.loads(line) for line in result.stdout.splitlines()]
    for record, before, stop in zip(stopped, plain, [option_stop, own_stop, None]):
        cut = before["completion"] if stop is None else before["completion"][: before["completion"].find(stop)]
        assert record["completion"] == cut
        assert before["tokens"][: len(record["tokens"])] == record["tokens"]  # the tokens up to the stop


@pytest.mark.parametrize("stop", ['""', "[1]", '[""]', "{}", '["a", 3]'])
def test_a_bad_stop_list_in_a_jsonl_line_is_a_one_line_error_naming_the_line(models_dir, tmp_path, stop):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "x", "stop": %s}\n' % stop, encoding="utf-8")
    result = run_cli("--prompts_file", path, "--models_dir", models_dir)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and stderr.count("\n") == 1 and "prompts.jsonl line 2" in stderr, stderr


def test_a_jsonl_record_may_give_one_stop_text_as_a_string_as_openai_does(models_dir, tmp_path):
    as_list = write_jsonl(tmp_path / "list.jsonl", [{"prompt": "Hello", "stop": ["e"]}])
    as_text = write_jsonl(tmp_path / "text.jsonl", [{"prompt": "Hello", "stop": "e"}])
    outputs = [run_cli("--prompts_file", path, "--models_dir", models_dir, "--n_tokens_to_generate", 12) for path in
               (as_list, as_text)]
    assert outputs[0].returncode == 0 and outputs[0].stdout == outputs[1].stdout


# ---------------------------------------------------------------- past the context window


def restart_reference(prompt, params, n_head, n_new, keep):
    """The definition: generate from the window as a prompt until it is full, then keep its last
    `keep` tokens as a new prompt, and so on."""
    n_ctx = params["wpe"].shape[0]
    window, out = list(prompt), []
    while len(out) < n_new:
        n = min(n_ctx + 1 - len(window), n_new - len(out))  # no position past n_ctx - 1 is needed
        new = gpt2.generate(window, params, n_head, n)
        out += new
        window = (window + new)[-keep:]
    return out


@pytest.mark.parametrize("keep", [1, 5, 16, 31])
@pytest.mark.parametrize("n_prompt", [3, 32])
def test_greedy_tokens_past_n_ctx_equal_restarting_from_the_kept_tokens(keep, n_prompt):
    hparams, params = load_fixture("tiny-a")
    prompt = reference.reference_tokens(hparams["n_vocab"], n_prompt, seed=13)
    n_new = 100  # several shifts through a 32-token window
    expected = restart_reference(prompt, params, hparams["n_head"], n_new, keep)
    shifts = []
    ours = list(gpt2.generate_steps(prompt, params, hparams["n_head"], n_new, keep=keep,
                                    on_shift=lambda rows, step: shifts.append(step)))
    assert [token for token, _ in ours] == expected
    first_segment = 33 - n_prompt  # tokens generated before the window is full: positions n_prompt .. 32
    assert len(shifts) == 1 + (n_new - first_segment - 1) // (33 - keep), shifts


def test_each_prompt_of_a_batch_shifts_at_its_own_step_as_if_alone(encoder):
    hparams, params = load_fixture("tiny-b")  # n_ctx 64
    prompts = [encoder.encode(text) for text in ("Hi", "A prompt of medium length, to be sure", "x " * 30)]
    batched = engine_completions(prompts, params, hparams["n_head"], 150, context_keep=20)
    for prompt, tokens in zip(prompts, batched):
        assert tokens == restart_reference(prompt, params, hparams["n_head"], 150, 20)


def test_cached_logits_after_a_shift_equal_a_full_pass_over_the_window():
    """1e-4 absolute, as for the cache without shifts."""
    hparams, params = load_fixture("tiny-a")
    prompt = reference.reference_tokens(hparams["n_vocab"], 10, seed=2)
    window = list(prompt)
    for token, logits in gpt2.generate_steps(prompt, params, hparams["n_head"], 60, keep=7):
        expected = gpt2.gpt2(window, **params, n_head=hparams["n_head"])[-1]
        assert np.abs(logits - expected).max() <= 1e-4
        window = window + [token] if len(window) < hparams["n_ctx"] else (window + [token])[-7:]


# ---------------------------------------------------------------- bad options


def one_line_usage_error(result, option):
    stderr = result.stderr.decode()
    assert result.returncode == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert option in stderr, stderr


@pytest.mark.parametrize("option, value", [
    ("--repetition_penalty", "0"), ("--repetition_penalty", "-1"), ("--repetition_penalty", "nan"),
    ("--repetition_penalty", "inf"), ("--frequency_penalty", "2.5"), ("--frequency_penalty", "nan"),
    ("--presence_penalty", "-3"), ("--stop", ""), ("--stop", r"\q"), ("--context_keep", "0"),
    ("--context_keep", "32"), ("--context_keep", "-1"),
])
def test_a_bad_control_value_is_a_one_line_usage_error_naming_the_option(models_dir, option, value):
    one_line_usage_error(run_cli("hello", "--models_dir", models_dir, option, value), option)


def test_context_keep_of_n_ctx_minus_one_is_accepted(models_dir):
    result = run_cli("hello", "--models_dir", models_dir, "--context_keep", 31, "--n_tokens_to_generate", 40)
    assert result.returncode == 0, result.stderr.decode()


def test_show_probs_with_a_penalty_shows_the_distribution_the_greedy_choice_was_made_from(models_dir):
    result = run_cli("The The The", "--n_tokens_to_generate", 8, "--models_dir", models_dir,
                     "--repetition_penalty", 1.5, "--show_probs", 2, "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    for line in result.stderr.decode("utf-8").splitlines():
        chosen = line.split(": chose ", 1)[1].split(" (", 1)[0]
        assert line.split("  | ", 1)[1].startswith(chosen + " "), line


def test_sampling_with_penalties_and_a_seed_is_reproducible_and_shifts_past_n_ctx(models_dir):
    args = ["Once", "--n_tokens_to_generate", 60, "--models_dir", models_dir, "--temperature", 0.9, "--seed", 3,
            "--repetition_penalty", 1.2, "--presence_penalty", 0.5, "--ignore_eos"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0 and first.stdout == second.stdout and first.stdout
    assert "context window (32 tokens) is full" in first.stderr.decode()
