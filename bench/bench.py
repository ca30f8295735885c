"""Benchmark gpt2.py against HuggingFace transformers, the uncached gpt2_pico.py and the matrix-only bound.

    python bench/bench.py                  # GPT-2 124M shapes, 2 threads: several minutes on a quiet machine
    python bench/bench.py --quick          # smoke run: one round, few tokens (rough figures)
    python bench/bench.py --model 355M --threads 2 --json bench_results.json

The weights are random but have the real shapes (speed does not depend on their values). They are
written once, in OpenAI's release format, by references/openai_checkpoint.py (TensorFlow) to
bench_cache/<size>/, so `python gpt2.py ... --models_dir bench_cache --model_size 124M` runs on them;
a float32 copy for transformers is saved once to bench_cache/transformers-<size>/ (safetensors).
How each figure is measured (threads, rounds, disturbed measurements) is bench/harness.py's job.

Every engine runs with the same number of threads: OMP/OPENBLAS/MKL_NUM_THREADS for subprocesses,
threadpoolctl for NumPy in this process, torch.set_num_threads for torch. Measurements are made in
rounds that alternate ours / transformers / pico; each figure is the median over the rounds.

What the numbers mean:
- prefill N tokens: the time until the first new token's logits for an N-token prompt: the 10-token
  PROMPT, 500 random tokens, and 500 tokens of plain English (the start of Python's LICENSE.txt, which
  stays the same from run to run). Ours: one
  pass over the prompt with a fresh cache, then the head on the last position
  (next(gpt2.generate_steps(prompt, ..., 1))). transformers: one forward pass over the prompt with
  use_cache=True and logits_to_keep=1 (also the head on the last position only).
- decode after N tokens (the 10-token and the 500 random-token prompts): new tokens per second once
  the prompt is in the cache, prefill excluded.
  Ours: the generator's steps after the first. transformers: model.generate (greedy, KV cache)
  timed for n+1 and for 1 new tokens; the difference is n steps of its own generation loop.
  pico (no cache: every step reruns the whole sequence): gpt2_pico.generate timed the same way.
- matrix-only bound: the time of just the weight matrix-vector products of one decode step (per
  layer x@c_attn.w, x@attn.c_proj.w, x@c_fc.w, x@mlp.c_proj.w with one float32 row, and x@wte.T
  for the head), as tokens/s = 1 / time. Reading every weight once is the floor of a decode step.
  It is measured in the same rounds as decode, so their ratio means the same on any machine
  (bench/report.py's targets are such ratios, not tokens per second).
- matrix-only prefill: likewise, just the weight products of the 500-token prefill (those rows of
  every block's products, the last block's after c_attn and the head on the last row only). Not a
  target: its share of transformers' prefill time shows how much room the prefill target leaves
  for attention, GELU and the rest on this machine.
- whole CLI: wall time of `python gpt2.py PROMPT --n_tokens_to_generate 40 ...` (10-token prompt)
  from start to exit, its CPU time and its peak resident memory (ru_maxrss from os.wait4), after one
  untimed run so that the weights are in the page cache. transformers: the same for
  bench/transformers_generate.py. pico: `python gpt2_pico.py PROMPT 40 124M DIR`.
- batch of B: new tokens per second of the engine (what --prompts_file runs) for B
  different 10-token prompts at once, 40 new tokens each, the pass over the prompts included.
- start-up: in a fresh process (bench/startup.py), the time to `import gpt2, utils` and call
  utils.load_encoder_hparams_and_params (warm page cache).
- tokenizer (bench/tokenizer.py): encoder.py and tiktoken on a 100,000-letter word and on 2 MB of
  mixed text, the word cache emptied first.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from harness import (
    BENCH_DIR,
    REPO_DIR,
    Samples,
    limit_threads,
    run_measured,
    seconds,
    undisturbed,
    wait_for_quiet,
)

sys.path.insert(0, REPO_DIR)

from report import BATCH_SIZES, check_targets, compute_figures, format_table  # noqa: E402
from tokenizer import measure_tokenizer  # noqa: E402

import gpt2  # noqa: E402
import gpt2_pico  # noqa: E402
import tf_checkpoint  # noqa: E402
import utils  # noqa: E402
from download import MODEL_FILES  # noqa: E402
from engine import Engine  # noqa: E402
from references import transformers_model  # noqa: E402
from settings import Settings  # noqa: E402

if TYPE_CHECKING:
    import transformers

PROMPT = "Alan Turing theorized that computers would one day become"  # 10 tokens
LONG_PROMPT_TOKENS = 500  # the random-token prompt and the English one
DECODED_PROMPTS = ("short", "long")  # decode is measured after these; prefill after every prompt
CLI_NEW_TOKENS = 40
FULL = dict(rounds=5, short_new=100, long_new=200, pico_new=20, matrix_passes=20, max_wait=30, batch_new=40)
QUICK = dict(rounds=1, short_new=10, long_new=10, pico_new=3, matrix_passes=5, max_wait=5, batch_new=5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("124M", "355M"), default="124M", help="which shapes to benchmark")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--json", default="bench_results.json", help="where to write all figures")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round, few tokens")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds (full: 5)")
    parser.add_argument("--max_wait", type=float, default=None,
                        help="seconds to wait for quiet CPUs before a round (full: 30)")
    parser.add_argument("--cache_dir", default=os.path.join(REPO_DIR, "bench_cache"), help="where the weights are kept")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the weights, made once


def ensure_checkpoint(cache_dir: str, size: str) -> str:
    """<cache_dir>/<size>/: the 7 files of an OpenAI release with random weights; written once."""
    model_dir = os.path.join(cache_dir, size)
    if all(os.path.isfile(os.path.join(model_dir, name)) for name in MODEL_FILES):
        return model_dir
    print(f"writing a {size}-shaped checkpoint to {model_dir} (once) ...", flush=True)
    os.makedirs(cache_dir, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{size}-", dir=cache_dir)
    script = os.path.join(REPO_DIR, "references", "openai_checkpoint.py")
    command = [sys.executable, script, "--config", size, "--out", partial]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_DIR)
    shutil.rmtree(model_dir, ignore_errors=True)  # an incomplete earlier attempt
    os.replace(partial, model_dir)  # the final name only ever names a complete checkpoint
    return model_dir


def ensure_transformers_copy(cache_dir: str, size: str, model_dir: str) -> str:
    """<cache_dir>/transformers-<size>/: the same weights as a float32 safetensors model, and a tokenizer."""
    hf_dir = os.path.join(cache_dir, f"transformers-{size}")
    if os.path.isfile(os.path.join(hf_dir, "config.json")):
        return hf_dir
    print(f"saving the weights for transformers to {hf_dir} (once) ...", flush=True)
    hparams = utils.load_hparams(model_dir)
    model = transformers_model.hf_model(hparams, utils.map_checkpoint_tensors(model_dir, hparams)).float()
    partial = tempfile.mkdtemp(prefix=f".transformers-{size}-", dir=cache_dir)
    model.save_pretrained(partial)
    gpt2_tokenizer(model_dir).save_pretrained(partial)
    shutil.rmtree(hf_dir, ignore_errors=True)
    os.replace(partial, hf_dir)
    return hf_dir


def gpt2_tokenizer(model_dir: str) -> "transformers.GPT2Tokenizer":
    """transformers' GPT2Tokenizer built from the release's encoder.json and vocab.bpe."""
    from transformers import GPT2Tokenizer

    with open(os.path.join(model_dir, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(model_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]  # line 1 is a version
    return GPT2Tokenizer(vocab=vocab, merges=merges)


# ---------------------------------------------------------------- in-process measurements


def ours_prefill(params: dict, n_head: int, prompt: list[int]) -> None:
    next(gpt2.generate_steps(prompt, params, n_head, 1))  # the first token's logits


def ours_decode(params: dict, n_head: int, prompt: list[int], n_steps: int) -> tuple[float, list[int]]:
    """Seconds for n_steps new tokens after the prompt, prefill excluded; and all the greedy tokens."""
    steps = gpt2.generate_steps(prompt, params, n_head, n_steps + 1)
    tokens = [next(steps)[0]]  # prefill and the first token: not timed
    start = time.perf_counter()
    tokens += [token for token, _ in steps]
    return time.perf_counter() - start, tokens


def load_transformers_model(hf_dir: str) -> "transformers.GPT2LMHeadModel":
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32).eval()


def transformers_prefill(model: "transformers.GPT2LMHeadModel", prompt: list[int]) -> None:
    import torch

    with torch.no_grad():
        model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)


def generation_steps_seconds(generate: Callable[[int], object], n_steps: int) -> float:
    """Seconds for n_steps tokens after the first: generate(n_steps + 1) minus generate(1)."""
    return seconds(generate, n_steps + 1) - seconds(generate, 1)


def matrix_only_step(params: dict, rows: int = 1) -> Callable[[], None]:
    """A function doing just the weight products of one decode step with `rows` rows, as gpt2.py has them."""
    rng = np.random.default_rng(0)
    n_embd = params["wpe"].shape[1]
    x = rng.standard_normal((rows, n_embd), dtype=np.float32)
    h = rng.standard_normal((rows, 4 * n_embd), dtype=np.float32)
    wte = params["wte"]

    def step() -> None:
        for block in params["blocks"]:
            x @ block["attn"]["c_attn"]["w"]
            x @ block["attn"]["c_proj"]["w"]
            x @ block["mlp"]["c_fc"]["w"]
            h @ block["mlp"]["c_proj"]["w"]
        x @ wte.T

    return step


def matrix_only_prefill(params: dict, n_rows: int) -> Callable[[], None]:
    """A function doing just the weight products of one n_rows-token prompt pass, as gpt2.py does
    them: every block's four on all rows, except that after the last block's c_attn only the last
    row goes on, and the head runs on that row only."""
    rng = np.random.default_rng(0)
    n_embd = params["wpe"].shape[1]
    x = rng.standard_normal((n_rows, n_embd), dtype=np.float32)
    h = rng.standard_normal((n_rows, 4 * n_embd), dtype=np.float32)
    blocks, wte = params["blocks"], params["wte"]

    def prefill() -> None:
        for layer, block in enumerate(blocks):
            x @ block["attn"]["c_attn"]["w"]
            rows = slice(-1, None) if layer == len(blocks) - 1 else slice(None)
            x[rows] @ block["attn"]["c_proj"]["w"]
            x[rows] @ block["mlp"]["c_fc"]["w"]
            h[rows] @ block["mlp"]["c_proj"]["w"]
        x[-1] @ wte.T

    return prefill


def english_prompt(tokenizer: "transformers.GPT2Tokenizer", n_tokens: int) -> list[int]:
    """The first n_tokens of Python's own LICENSE.txt: plain English prose that stays the same from
    run to run (and between the runs before and after a change), whatever this repository's files say."""
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt"), encoding="utf-8") as f:
        tokens = tokenizer(" ".join(f.read().split()))["input_ids"]
    return tokens[:n_tokens]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def warm_up(params: dict, n_head: int, model: "transformers.GPT2LMHeadModel", prompt: list[int]) -> dict:
    """Untimed: touch every page of the weights, let torch set itself up, and check that both
    implementations run the same model (the same greedy tokens)."""
    _, ours = ours_decode(params, n_head, prompt, 20)
    theirs = transformers_model.hf_greedy(model, prompt, 21)
    gpt2_pico.generate(prompt, params, n_head, 2)
    return {"greedy_tokens_compared": len(ours), "greedy_tokens_agreeing": common_prefix(ours, theirs)}


def measure_in_process(
    samples: Samples, params: dict, n_head: int, model: "transformers.GPT2LMHeadModel", prompts: dict, counts: dict
) -> None:
    """Rounds alternating ours / transformers / pico, each figure in seconds, added to samples."""
    matrix_step = matrix_only_step(params)
    prefill_products = matrix_only_prefill(params, len(prompts["long"]))
    for round_ in range(counts["rounds"]):
        print(f"  round {round_ + 1}/{counts['rounds']}", flush=True)
        samples.add("busy_share_before_round", wait_for_quiet(counts["max_wait"]))
        for label, prompt in prompts.items():
            samples.measure(f"ours_prefill_{label}", lambda: seconds(ours_prefill, params, n_head, prompt))
            samples.measure(f"transformers_prefill_{label}", lambda: seconds(transformers_prefill, model, prompt))
        for label in DECODED_PROMPTS:
            prompt, n_new = prompts[label], counts[f"{label}_new"]
            generate = lambda n: transformers_model.hf_greedy(model, prompt, n)
            samples.measure(f"ours_decode_{label}", lambda: ours_decode(params, n_head, prompt, n_new)[0])
            samples.measure(f"transformers_decode_{label}", lambda: generation_steps_seconds(generate, n_new))
        pico = lambda n: gpt2_pico.generate(prompts["short"], params, n_head, n)
        samples.measure("pico_decode_short", lambda: generation_steps_seconds(pico, counts["pico_new"]))
        passes = lambda: statistics.median(seconds(matrix_step) for _ in range(counts["matrix_passes"]))
        samples.measure("matrix_only_step", passes)
        samples.measure("matrix_only_prefill_long", lambda: seconds(prefill_products))
        for size in BATCH_SIZES:
            batch = batch_prompts(prompts["short"], size)
            run_batch = lambda: seconds(engine_completions, batch, params, n_head, counts["batch_new"])
            samples.measure(f"ours_batch{size}", run_batch)


def engine_completions(prompts: list[list[int]], params: dict, n_head: int, n_new: int) -> None:
    """What --prompts_file runs: every prompt queued in the engine, all generating together."""
    engine = Engine(params, n_head, None, lambda tokens: b"", max_rows=len(prompts))
    for prompt in prompts:
        engine.submit(prompt, Settings(max_tokens=n_new))
    for _ in engine.run():
        pass


def batch_prompts(prompt: list[int], size: int) -> list[list[int]]:
    """size different 10-token prompts (the short prompt with its first token changed)."""
    return [[1000 + i] + prompt[1:] for i in range(size)]


# ---------------------------------------------------------------- whole-process measurements


def cli_commands(size: str, cache_dir: str, hf_dir: str, threads: int) -> dict[str, list[str]]:
    python, n = sys.executable, str(CLI_NEW_TOKENS)
    return {
        "ours": [python, "gpt2.py", PROMPT, "--n_tokens_to_generate", n, "--models_dir", cache_dir,
                 "--model_size", size, "--ignore_eos"],  # exactly 40 tokens, like the others
        "transformers": [python, os.path.join(BENCH_DIR, "transformers_generate.py"), hf_dir, PROMPT, n, str(threads)],
        "pico": [python, "gpt2_pico.py", PROMPT, n, size, cache_dir],
    }


def measure_processes(samples: Samples, commands: dict[str, list[str]], counts: dict) -> None:
    """Each command once untimed (warm page cache), then rounds alternating the commands."""
    for command in commands.values():
        run_measured(command)
    for round_ in range(counts["rounds"]):
        print(f"  round {round_ + 1}/{counts['rounds']}", flush=True)
        samples.add("busy_share_before_round", wait_for_quiet(counts["max_wait"]))
        for name, command in commands.items():
            (wall, rss, cpu, _), share = undisturbed(lambda: run_measured(command))
            samples.add(f"{name}_cli_seconds", wall)
            samples.add(f"{name}_cli_cpu_seconds", cpu)
            samples.add(f"{name}_cli_peak_rss_bytes", rss)
            samples.add(f"{name}_cli_others_share", share)


def measure_startup(samples: Samples, size: str, cache_dir: str, rounds: int) -> None:
    command = [sys.executable, os.path.join(BENCH_DIR, "startup.py"), size, cache_dir]
    run_measured(command)  # warm the page cache
    for _ in range(max(rounds, 3)):
        samples.measure("startup_seconds", lambda: float(run_measured(command)[3]))


def run_info(
    args: argparse.Namespace, counts: dict, model: "transformers.GPT2LMHeadModel", agreement: dict, samples: Samples,
    load_start: tuple[float, float, float],
) -> dict:
    import torch
    import transformers

    return dict(
        model=args.model, threads=args.threads, quick=args.quick, rounds=counts["rounds"], counts=counts,
        load_average_start=load_start, load_average_end=os.getloadavg(), disturbed_share=samples.disturbed_share(),
        python=platform.python_version(), numpy_version=np.__version__, torch_version=torch.__version__,
        transformers_version=transformers.__version__, transformers_attention=model.config._attn_implementation,
        transformers_decode_method="generate(n+1) - generate(1): n steps of transformers' own greedy loop",
        transformers_weights="from_pretrained of a float32 safetensors copy saved once in the cache",
        **agreement,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    counts = dict(QUICK if args.quick else FULL)
    counts["rounds"] = args.rounds or counts["rounds"]
    counts["max_wait"] = counts["max_wait"] if args.max_wait is None else args.max_wait
    load_start = os.getloadavg()
    limits = limit_threads(args.threads)  # noqa: F841 (the limits hold while the object lives)
    cache_dir = os.path.abspath(args.cache_dir)
    model_dir = ensure_checkpoint(cache_dir, args.model)
    hf_dir = ensure_transformers_copy(cache_dir, args.model, model_dir)

    hparams = utils.load_hparams(model_dir)
    params = utils.load_params(model_dir, hparams)
    model = load_transformers_model(hf_dir)
    tokenizer = gpt2_tokenizer(model_dir)
    prompts = {
        "short": tokenizer(PROMPT)["input_ids"],
        "long": np.random.default_rng(0).integers(0, hparams["n_vocab"] - 1, LONG_PROMPT_TOKENS).tolist(),
        "english": english_prompt(tokenizer, LONG_PROMPT_TOKENS),
    }
    samples = Samples()
    print("in-process: ours / transformers / pico, alternating", flush=True)
    agreement = warm_up(params, hparams["n_head"], model, prompts["short"])
    measure_in_process(samples, params, hparams["n_head"], model, prompts, counts)
    print("whole processes: ours / transformers / pico, alternating", flush=True)
    measure_processes(samples, cli_commands(args.model, cache_dir, hf_dir, args.threads), counts)
    measure_startup(samples, args.model, cache_dir, counts["rounds"])
    print("tokenizer: ours / tiktoken", flush=True)
    encoder = utils.load_encoder(args.model, cache_dir)
    for _ in range(counts["rounds"]):
        measure_tokenizer(samples, encoder, model_dir)

    data_file = os.path.join(model_dir, utils.CHECKPOINT_PREFIX + tf_checkpoint.DATA_SUFFIX)
    figures = compute_figures(samples, counts, os.path.getsize(data_file))
    targets = check_targets(figures)
    info = run_info(args, counts, model, agreement, samples, load_start)
    print()
    print(format_table(figures, targets, info))
    info["runtime_seconds"] = time.perf_counter() - started
    print(f"\ntotal runtime {info['runtime_seconds']:.0f} s; all figures written to {args.json}")
    with open(args.json, "w") as f:
        json.dump({"info": info, "figures": figures, "targets": targets, "samples": samples}, f, indent=2)


if __name__ == "__main__":
    main()
