"""Many prompts at once: batched generation with left padding, JSON Lines output, resuming."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpt2
import reference
from conftest import OFFLINE_ENV, REPO_DIR, engine_completions, json_lines, load_fixture, run_gpt2, symlinked_models_dir
from encoder import get_encoder
from engine import Engine
from settings import Settings

# prompts of very different lengths, so that left padding and position ids really matter
PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog near the river bank at noon", "A",
           "Once upon a time there was", "", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "Ünïcödé ✓ 😀", "x"]


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("tiny-b", reference.FIXTURES_DIR)


def encode_all(encoder, prompts):
    return [encoder.encode(p) or [encoder.eot_token] for p in prompts]


def test_batched_tokens_equal_generating_each_prompt_alone(encoder):
    hparams, params = load_fixture("tiny-b")
    prompts = encode_all(encoder, PROMPTS)
    assert max(map(len, prompts)) - min(map(len, prompts)) >= 15
    batched = engine_completions(prompts, params, hparams["n_head"], 20)
    for prompt, tokens in zip(prompts, batched):
        assert tokens == gpt2.generate(prompt, params, hparams["n_head"], 20)


def test_batched_logits_equal_the_single_prompt_logits_at_every_step(encoder):
    """1e-4 absolute, as for the single-prompt cache: sharing the passes must change nothing but round-off."""
    hparams, params = load_fixture("tiny-b")
    prompts = encode_all(encoder, PROMPTS[:4])
    alone = [[logits for _, logits in gpt2.generate_steps(p, params, hparams["n_head"], 10)] for p in prompts]
    engine = Engine(params, hparams["n_head"], None, encoder.decode_bytes, max_rows=4)
    requests = [engine.submit(prompt, Settings(max_tokens=10)) for prompt in prompts]
    steps = {request: 0 for request in requests}
    for request, event in engine.run():
        row = requests.index(request)
        assert np.abs(event.logits - alone[row][steps[request]]).max() <= 1e-4, (steps[request], row)
        steps[request] += 1
    assert list(steps.values()) == [10] * 4


def test_each_prompt_in_a_batch_stops_at_its_own_endoftext(encoder):
    hparams, params = load_fixture("tiny-b")
    prompts = encode_all(encoder, PROMPTS[:3])
    full = engine_completions(prompts, params, hparams["n_head"], 12)
    stop_token = full[1][4]  # pretend this token of prompt 1 were <|endoftext|>
    stopped = engine_completions(prompts, params, hparams["n_head"], 12, eot_token=stop_token)
    for tokens, expected in zip(stopped, full):
        cut = expected.index(stop_token) if stop_token in expected else len(expected)
        assert tokens == expected[:cut]


# ---- the command line


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-b"})


def write_prompts(path, prompts, as_json=False):
    lines = [json.dumps({"prompt": p, "id": i}) if as_json else p for i, p in enumerate(prompts)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_records(encoder, prompts, n_new, line_numbers=None):
    hparams, params = load_fixture("tiny-b")
    out = []
    for i, prompt in enumerate(prompts):
        tokens = gpt2.generate(encoder.encode(prompt) or [encoder.eot_token], params, hparams["n_head"], n_new)
        if encoder.eot_token in tokens:
            tokens = tokens[: tokens.index(encoder.eot_token)]
        line = line_numbers[i] if line_numbers else i + 1
        out.append({"line": line, "prompt": prompt, "completion": encoder.decode(tokens), "tokens": tokens})
    return out


def test_prompts_file_prints_one_json_line_per_prompt_in_input_order(models_dir, encoder, tmp_path):
    prompts = [p for p in PROMPTS if p]  # an empty line is skipped, not an empty prompt
    path = write_prompts(tmp_path / "prompts.txt", prompts)
    result = run_gpt2("--prompts_file", path, "--n_tokens_to_generate", 8, "--models_dir", models_dir,
                      "--batch_size", 3)
    assert result.returncode == 0, result.stderr.decode()
    assert json_lines(result.stdout) == expected_records(encoder, prompts, 8)


def test_jsonl_prompts_file_reads_the_prompt_field(models_dir, encoder, tmp_path):
    prompts = ["line one", "with a\nnewline inside", ""]  # JSON can carry what a text line cannot
    path = write_prompts(tmp_path / "prompts.jsonl", prompts, as_json=True)
    result = run_gpt2("--prompts_file", path, "--n_tokens_to_generate", 6, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    assert json_lines(result.stdout) == expected_records(encoder, prompts, 6)


def test_batch_size_does_not_change_the_output(models_dir, tmp_path):
    """Each prompt samples from its own seeded generator. Batch shapes change float32 round-off
    (~1e-6), which could only move a draw landing that close to a boundary between two tokens:
    top_k 10 keeps those boundaries ~0.1 apart (the fixture's full distribution is nearly flat,
    ~2e-5 apart, where round-off does decide draws)."""
    path = write_prompts(tmp_path / "prompts.txt", [p for p in PROMPTS if p])
    outputs = [run_gpt2("--prompts_file", path, "--n_tokens_to_generate", 6, "--models_dir", models_dir,
                        "--batch_size", size, "--temperature", "0.9", "--top_k", "10", "--seed", "4").stdout
               for size in (1, 3, 8)]
    assert outputs[0] == outputs[1] == outputs[2] != b""


def test_output_file_gets_exactly_the_records_stdout_would(models_dir, tmp_path):
    path = write_prompts(tmp_path / "prompts.txt", ["alpha", "beta", "gamma"])
    to_stdout = run_gpt2("--prompts_file", path, "--n_tokens_to_generate", 5, "--models_dir", models_dir)
    result = run_gpt2("--prompts_file", path, "--n_tokens_to_generate", 5, "--models_dir", models_dir,
                      "--output", tmp_path / "out.jsonl")
    assert result.returncode == 0 and result.stdout == b""
    assert (tmp_path / "out.jsonl").read_bytes() == to_stdout.stdout


def test_a_run_killed_midway_continues_without_repeating_or_losing_a_prompt(models_dir, tmp_path):
    prompts = [f"Prompt number {i} says" for i in range(150)]
    path = write_prompts(tmp_path / "prompts.txt", prompts)
    args = ["--prompts_file", path, "--n_tokens_to_generate", 20, "--models_dir", models_dir, "--batch_size", 2]
    complete = run_gpt2(*args).stdout
    output = tmp_path / "out.jsonl"
    env = dict(os.environ, **OFFLINE_ENV)
    command = [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args), "--output", str(output)]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not output.exists() or output.read_bytes().count(b"\n") < 10):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines_when_killed = output.read_bytes().count(b"\n")
    assert 10 <= lines_when_killed < len(prompts), "the kill should land in the middle of the run"
    resumed = run_gpt2(*args, "--output", output)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert output.read_bytes() == complete


def test_a_record_cut_off_mid_line_is_rewritten_on_resume(models_dir, tmp_path):
    path = write_prompts(tmp_path / "prompts.txt", ["one", "two", "three", "four"])
    args = ["--prompts_file", path, "--n_tokens_to_generate", 5, "--models_dir", models_dir, "--batch_size", 1]
    complete = run_gpt2(*args).stdout
    second_line_end = complete.index(b"\n", complete.index(b"\n") + 1)
    output = tmp_path / "out.jsonl"
    output.write_bytes(complete[: second_line_end - 7])  # as if killed while writing record 2
    assert run_gpt2(*args, "--output", output).returncode == 0
    assert output.read_bytes() == complete


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "", "has no prompts"),
        ("blank.txt", "\n\n", "has no prompts"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl line 2 is not valid JSON"),
        ("nofield.jsonl", '{"prompt": "ok"}\n{"text": "no prompt"}\n', 'nofield.jsonl line 2 has no "prompt" string'),
        ("notstring.jsonl", '{"prompt": 42}\n', 'line 1 has no "prompt" string'),
        ("long.txt", "ok\n" + "word " * 80 + "\n", "long.txt line 2: the prompt"),
    ],
)
def test_bad_prompts_file_is_a_one_line_error_and_the_output_is_kept(models_dir, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    output = tmp_path / "out.jsonl"
    output.write_bytes(b'{"line": 1, "prompt": "earlier", "completion": "work", "tokens": []}\n')
    before = md5(output)
    result = run_gpt2("--prompts_file", path, "--models_dir", models_dir, "--output", output)
    stderr = result.stderr.decode()
    assert result.returncode != 0 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert message in stderr
    assert md5(output) == before


@pytest.mark.parametrize("which", ["missing", "directory", "not utf-8"])
def test_unreadable_prompts_file_is_a_one_line_error_naming_it(models_dir, tmp_path, which):
    path = tmp_path / "prompts.txt"
    if which == "directory":
        path.mkdir()
    elif which == "not utf-8":
        path.write_bytes(b"caf\xe9\n")
    result = run_gpt2("--prompts_file", path, "--models_dir", models_dir)
    stderr = result.stderr.decode()
    assert result.returncode != 0 and stderr.count("\n") == 1 and str(path) in stderr, stderr


def test_output_from_other_prompts_is_refused_and_left_alone(models_dir, tmp_path):
    path = write_prompts(tmp_path / "prompts.txt", ["one", "two"])
    output = tmp_path / "out.jsonl"
    output.write_bytes(b'{"line": 1, "prompt": "something else", "completion": "", "tokens": []}\n')
    before = md5(output)
    result = run_gpt2("--prompts_file", path, "--models_dir", models_dir, "--output", output)
    assert result.returncode != 0 and "not this run's record" in result.stderr.decode()
    assert md5(output) == before


def test_output_that_is_not_ours_is_refused_and_left_alone(models_dir, tmp_path):
    path = write_prompts(tmp_path / "prompts.txt", ["one"])
    output = tmp_path / "notes.txt"
    output.write_bytes(b"my precious notes without a final newline")
    result = run_gpt2("--prompts_file", path, "--models_dir", models_dir, "--output", output)
    assert result.returncode != 0 and "did not write" in result.stderr.decode()
    assert output.read_bytes() == b"my precious notes without a final newline"


@pytest.mark.parametrize("args, message", [
    (["hello", "--prompts_file", "p.txt"], "exactly one of"),
    (["hello", "--output", "o.jsonl"], "--output goes with --prompts_file"),
    (["--prompts_file", "p.txt", "--show_probs", "3"], "--show_probs goes with a single prompt"),
    (["--prompts_file", "p.txt", "--batch_size", "0"], "--batch_size"),
])
def test_conflicting_options_are_a_one_line_error(args, message):
    result = run_gpt2(*args)
    stderr = result.stderr.decode()
    assert result.returncode != 0 and stderr.count("\n") == 1 and message in stderr, stderr


def test_running_out_of_memory_is_a_one_line_error(models_dir, tmp_path):
    """A batch whose key/value cache cannot be allocated: NumPy's MemoryError becomes advice."""
    path = write_prompts(tmp_path / "prompts.txt", ["a"] * 3)
    script = (
        "import sys, numpy; sys.path.insert(0, sys.argv[1]); import cli, gpt2\n"
        "def no_memory(*args, **kwargs): raise MemoryError\n"
        "gpt2.KVCache = no_memory\n"
        "cli.main(['--prompts_file', sys.argv[2], '--models_dir', sys.argv[3]])\n"
    )
    env = dict(os.environ, **OFFLINE_ENV)
    result = subprocess.run([sys.executable, "-c", script, REPO_DIR, str(path), str(models_dir)],
                            capture_output=True, env=env, timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and stderr.count("\n") == 1 and "--batch_size" in stderr, stderr


def test_with_a_seed_each_prompt_draws_by_its_place_in_the_file_and_a_records_own_seed_is_its_own(models_dir,
                                                                                                   encoder, tmp_path):
    """Line r (0-based among the prompts) samples as the engine does alone with seed [S, r]; a record's
    "seed" is used as it is, like --seed for a single prompt. Top_k 10, as above."""
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Same"}\n{"prompt": "Same"}\n{"prompt": "Same", "seed": 11}\n', encoding="utf-8")
    result = run_gpt2("--prompts_file", path, "--n_tokens_to_generate", 8, "--models_dir", models_dir,
                      "--temperature", "0.9", "--top_k", "10", "--seed", "4", "--ignore_eos")
    got = [record["tokens"] for record in json_lines(result.stdout)]
    hparams, params = load_fixture("tiny-b")
    expected = []
    for seed in ([4, 0], [4, 1], 11):
        engine = Engine(params, hparams["n_head"], None, encoder.decode_bytes, max_rows=1)
        request = engine.submit(encoder.encode("Same"), Settings(max_tokens=8, temperature=0.9, top_k=10), seed)
        for _ in engine.run():
            pass
        expected.append(request.continuation.tokens)
    assert got == expected and got[0] != got[1]
