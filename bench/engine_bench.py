"""The engine's figures: continuous batching against its own bounds, measured in one run.

    python bench/engine_bench.py                 # 124M shapes, 2 threads (also run by bench/bench.py)
    python bench/engine_bench.py --quick         # smoke run

- decode throughput at R rows in flight (1, 8, 32): new tokens per second of the engine's steps once
  every request's prompt is in, against the matrix-only bound at that batch size: the time of just
  the weight products of one step with R rows (x[R, n_embd] @ each block's weights, and the head),
  as R / time. OpenBLAS's products for 2 to 32 rows read the weights far slower than one row's
  matrix-vector product (measured here: about 8 against 30 GB/s), so each R has its own bound.
- mixed job: 64 prompts of 5 to 300 tokens, max_tokens 8 to 256 (a fixed seed), 8 rows at a time,
  against a uniform job with the same total prompt and generated tokens (every prompt of the mean
  length and mean max_tokens). A static batch would wait for its longest row; a continuous one
  should take about as long as the uniform job.
- time to the next token: 7 rows generating, then a 1,000-token prompt joins; the longest step
  while its prompt runs (in chunks), against the median step before it joined.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

from engine import Engine  # noqa: E402
from settings import Settings  # noqa: E402

ROWS = (1, 8, 32)
FULL = dict(rounds=3, decode_steps=24, mixed_prompts=64, joining_prompt=1000)
QUICK = dict(rounds=1, decode_steps=4, mixed_prompts=16, joining_prompt=300)


def new_engine(params: dict, n_head: int, max_rows: int) -> Engine:
    return Engine(params, n_head, None, lambda tokens: b"", max_rows=max_rows)  # no end of text: exact lengths


def random_prompt(rng: np.random.Generator, n_vocab: int, length: int) -> list[int]:
    return rng.integers(0, n_vocab - 1, length).tolist()


def matrix_only_seconds(params: dict, rows: int, passes: int = 10) -> float:
    """The median time of one step's weight products with `rows` rows (bench.py's matrix-only step)."""
    from bench import matrix_only_step

    step = matrix_only_step(params, rows)
    step()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_tokens_per_second(params: dict, n_head: int, rows: int, n_steps: int) -> float:
    """Tokens per second of the engine's steps with `rows` requests generating (10-token prompts), prompts excluded."""
    rng = np.random.default_rng(rows)
    engine = new_engine(params, n_head, rows)
    for _ in range(rows):
        engine.submit(random_prompt(rng, params["wte"].shape[0], 10), Settings(max_tokens=n_steps + 2))
    engine.step()  # every prompt, and the first tokens
    start = time.perf_counter()
    for _ in range(n_steps):
        engine.step()
    return rows * n_steps / (time.perf_counter() - start)


def job_seconds(params: dict, n_head: int, jobs: list[tuple[list[int], int]], max_rows: int) -> float:
    """Wall time of a --prompts_file-like job: every prompt queued, max_rows running at a time."""
    engine = new_engine(params, n_head, max_rows)
    start = time.perf_counter()
    for prompt, max_tokens in jobs:
        engine.submit(prompt, Settings(max_tokens=max_tokens))
    for _ in engine.run():
        pass
    return time.perf_counter() - start


def mixed_and_uniform_jobs(n_vocab: int, n_prompts: int) -> tuple[list, list]:
    rng = np.random.default_rng(16)
    lengths = rng.integers(5, 301, n_prompts)
    new_tokens = rng.integers(8, 257, n_prompts)
    mixed = [(random_prompt(rng, n_vocab, int(n)), int(m)) for n, m in zip(lengths, new_tokens)]
    mean_length, mean_new = round(lengths.mean()), round(new_tokens.mean())
    uniform = [(random_prompt(rng, n_vocab, mean_length), mean_new) for _ in range(n_prompts)]
    return mixed, uniform


def joining_step_times(params: dict, n_head: int, n_joining: int) -> tuple[float, float]:
    """(median step before, longest step while a long prompt's chunks run) with 7 rows generating."""
    rng = np.random.default_rng(7)
    n_vocab = params["wte"].shape[0]
    engine = new_engine(params, n_head, 8)
    running = [engine.submit(random_prompt(rng, n_vocab, 10), Settings(max_tokens=400)) for _ in range(7)]
    engine.step()

    def timed_step() -> float:
        start = time.perf_counter()
        engine.step()
        return time.perf_counter() - start

    before = statistics.median(timed_step() for _ in range(8))
    joining = engine.submit(random_prompt(rng, n_vocab, n_joining), Settings(max_tokens=1))
    during = []
    while not joining.done:
        during.append(timed_step())
    assert all(len(request.continuation.tokens) >= 8 + len(during) for request in running)
    return before, max(during)


def measure(params: dict, n_head: int, counts: dict) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    add = lambda name, value: samples.setdefault(name, []).append(value)
    mixed, uniform = mixed_and_uniform_jobs(params["wte"].shape[0], counts["mixed_prompts"])
    for round_ in range(counts["rounds"]):
        print(f"  engine round {round_ + 1}/{counts['rounds']}", flush=True)
        for rows in ROWS:
            add(f"bound_{rows}", rows / matrix_only_seconds(params, rows))
            add(f"decode_{rows}", decode_tokens_per_second(params, n_head, rows, counts["decode_steps"]))
        add("mixed_seconds", job_seconds(params, n_head, mixed, 8))
        add("uniform_seconds", job_seconds(params, n_head, uniform, 8))
        before, during = joining_step_times(params, n_head, counts["joining_prompt"])
        add("step_before_join", before)
        add("longest_step_while_joining", during)
    return {name: statistics.median(values) for name, values in samples.items()}


def targets(f: dict[str, float]) -> list[tuple[str, float, str, float]]:
    return [
        ("engine: 32 rows / 1 row, decode tokens/s", f["decode_32"] / f["decode_1"], ">=", 6.5),
        ("engine: mixed job / uniform job, wall time", f["mixed_seconds"] / f["uniform_seconds"], "<=", 1.2),
        ("engine: longest step while 1,000 tokens join / usual", f["longest_step_while_joining"]
         / f["step_before_join"], "<=", 3.0),
    ]


def format_table(f: dict[str, float]) -> str:
    lines = [f"{'engine, rows in flight':36}{'tokens/s':>10}{'bound':>10}{'of bound':>10}"]
    for rows in ROWS:
        decode, bound = f[f"decode_{rows}"], f[f"bound_{rows}"]
        lines.append(f"{f'  decode with {rows} rows':36}{decode:10.1f}{bound:10.1f}{decode / bound:10.3f}")
    lines += [
        f"{'  mixed job, 8 rows (s)':36}{f['mixed_seconds']:10.2f}",
        f"{'  uniform job, same tokens (s)':36}{f['uniform_seconds']:10.2f}",
        f"{'  step, 7 rows generating (ms)':36}{1000 * f['step_before_join']:10.1f}",
        f"{'  longest step while a prompt joins (ms)':36}{1000 * f['longest_step_while_joining']:10.1f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("124M", "355M"), default="124M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds (full: 3)")
    parser.add_argument("--cache_dir", default=os.path.join(os.path.dirname(BENCH_DIR), "bench_cache"))
    args = parser.parse_args(argv)
    import utils
    from bench import ensure_checkpoint
    from harness import limit_threads

    limits = limit_threads(args.threads)  # noqa: F841 (the limits hold while the object lives)
    model_dir = ensure_checkpoint(os.path.abspath(args.cache_dir), args.model)
    hparams = utils.load_hparams(model_dir)
    params = utils.load_params(model_dir, hparams)
    counts = dict(QUICK if args.quick else FULL)
    counts["rounds"] = args.rounds or counts["rounds"]
    figures = measure(params, hparams["n_head"], counts)
    print(format_table(figures))
    for name, value, relation, threshold in targets(figures):
        passed = value >= threshold if relation == ">=" else value <= threshold
        print(f"  {'PASS' if passed else 'FAIL'}  {name:52}{value:9.3f} {relation} {threshold}")


if __name__ == "__main__":
    main()
