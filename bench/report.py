"""The benchmark's figures, its targets and the table it prints, from the samples bench.py measured."""
import os
import statistics
from typing import Callable

from harness import TRIES, Samples

BATCH_SIZES = (1, 4, 8)  # --prompts_file throughput: prompts generated together


def compute_figures(samples: Samples, counts: dict, weights_bytes: int) -> dict[str, float]:
    m = {name: statistics.median(values) for name, values in samples.items()}
    figures = {
        "weights_file_bytes": weights_bytes,
        "matrix_only_bound_tokens_per_s": 1 / m["matrix_only_step"],
        "matrix_only_prefill_long_seconds": m["matrix_only_prefill_long"],
        "startup_seconds": m["startup_seconds"],
        "pico_decode_short_tokens_per_s": counts["pico_new"] / m["pico_decode_short"],
    }
    for engine in ("ours", "transformers"):
        for label in ("short", "long", "english"):
            figures[f"{engine}_prefill_{label}_seconds"] = m[f"{engine}_prefill_{label}"]
        for label in ("short", "long"):
            figures[f"{engine}_decode_{label}_tokens_per_s"] = counts[f"{label}_new"] / m[f"{engine}_decode_{label}"]
    for size in BATCH_SIZES:  # new tokens of all prompts per second, the pass over the prompts included
        figures[f"ours_batch{size}_tokens_per_s"] = size * counts["batch_new"] / m[f"ours_batch{size}"]
    for engine in ("ours", "transformers", "pico"):
        for figure in ("seconds", "cpu_seconds", "peak_rss_bytes"):
            figures[f"{engine}_cli_{figure}"] = m[f"{engine}_cli_{figure}"]
    for engine in ("ours", "tiktoken"):
        figures[f"{engine}_tokenizer_word_seconds"] = m[f"{engine}_tokenizer_word"]
        figures[f"{engine}_tokenizer_text_mb_per_s"] = m["tokenizer_text_bytes"] / 1e6 / m[f"{engine}_tokenizer_text"]
    figures["ours_tokenizer_word_growth"] = m["ours_tokenizer_word"] / m["ours_tokenizer_short_word"]
    return figures


def target(name: str, value: float, relation: str, threshold: float) -> dict:
    passed = value >= threshold if relation == ">=" else value <= threshold
    return {"target": name, "value": value, "relation": relation, "threshold": threshold, "pass": bool(passed)}


def check_targets(f: dict[str, float]) -> list[dict]:
    """Speed targets are ratios of figures measured in the same run (issue 21), so that they mean the
    same on any machine; only start-up and the tokenizer keep absolute times."""
    decode_short, decode_long = f["ours_decode_short_tokens_per_s"], f["ours_decode_long_tokens_per_s"]
    bound, theirs = f["matrix_only_bound_tokens_per_s"], f["transformers_decode_short_tokens_per_s"]
    prefill = lambda label: f[f"ours_prefill_{label}_seconds"] / f[f"transformers_prefill_{label}_seconds"]
    return [
        target("decode after 10 tokens / matrix-only bound", decode_short / bound, ">=", 0.9),
        target("decode after 500 tokens / matrix-only bound", decode_long / bound, ">=", 0.85),
        target("decode after 10 tokens / transformers'", decode_short / theirs, ">=", 1.6),
        target("prefill 500 random tokens: ours / transformers' time", prefill("long"), "<=", 0.8),
        target("prefill 500 English tokens: ours / transformers' time", prefill("english"), "<=", 0.8),
        target("whole CLI: transformers' time / ours", f["transformers_cli_seconds"] / f["ours_cli_seconds"], ">=", 5),
        target("CLI peak RSS / weights file", f["ours_cli_peak_rss_bytes"] / f["weights_file_bytes"], "<=", 1.15),
        target("start-up: import + load (s)", f["startup_seconds"], "<=", 0.5),
        target("tokenizer: 100,000-letter word (s)", f["ours_tokenizer_word_seconds"], "<=", 0.5),
        target("tokenizer: 100,000 / 10,000-letter word time", f["ours_tokenizer_word_growth"], "<=", 30),
    ]


def format_table(f: dict[str, float], targets: list[dict], info: dict) -> str:
    def row(label: str, figure: str, fmt: Callable, engines: tuple = ("ours", "transformers", "pico")) -> str:
        cells = [fmt(f[figure.format(e)]) if figure.format(e) in f else f"{'-':>10}" for e in engines]
        return f"{label:36}" + "".join(cells)

    ms = lambda s: f"{1000 * s:10.1f}"
    rate = lambda r: f"{r:10.1f}"
    sec = lambda s: f"{s:10.2f}"
    mib = lambda b: f"{b / 2**20:10.0f}"
    prefill_products_share = f["matrix_only_prefill_long_seconds"] / f["transformers_prefill_long_seconds"]
    rows = [
        row("prefill, 10-token prompt (ms)", "{}_prefill_short_seconds", ms),
        row("prefill, 500 random tokens (ms)", "{}_prefill_long_seconds", ms),
        row("prefill, 500 English tokens (ms)", "{}_prefill_english_seconds", ms),
        row("decode after 10 tokens (tokens/s)", "{}_decode_short_tokens_per_s", rate),
        row("decode after 500 tokens (tokens/s)", "{}_decode_long_tokens_per_s", rate),
        row("whole CLI, 40 tokens: wall (s)", "{}_cli_seconds", sec),
        row("  its CPU time, user + system (s)", "{}_cli_cpu_seconds", sec),
        row("  its peak RSS (MiB)", "{}_cli_peak_rss_bytes", mib),
    ]
    lines = [
        f"GPT-2 {info['model']} shapes (random weights), {info['threads']} threads, median of {info['rounds']} rounds"
        + (" (QUICK: rough figures)" if info["quick"] else ""),
        f"transformers {info['transformers_version']} ({info['transformers_attention']} attention), "
        f"torch {info['torch_version']}, numpy {info['numpy_version']}, Python {info['python']}",
        f"load average {info['load_average_start'][0]:.1f} at start, {info['load_average_end'][0]:.1f} at end "
        f"({os.cpu_count()} CPUs); measurements disturbed by other processes even after {TRIES} tries: "
        f"{info['disturbed_share']:.0%}",
        "",
        f"{'':36}{'ours':>10}{'transf.':>10}{'pico':>10}",
        *rows,
        "",
        f"{'matrix-only bound (tokens/s)':36}{rate(f['matrix_only_bound_tokens_per_s'])}",
        f"{'matrix-only prefill, 500 random (ms)':36}{ms(f['matrix_only_prefill_long_seconds'])}"
        f"   {prefill_products_share:.2f} of transformers' time",
        f"{'weights file (MiB)':36}{mib(f['weights_file_bytes'])}",
        f"{'start-up: import + load (s)':36}{f['startup_seconds']:10.3f}",
        *[f"{f'ours, batch of {size} prompts (tokens/s)':36}{rate(f[f'ours_batch{size}_tokens_per_s'])}"
          for size in BATCH_SIZES],
        f"greedy tokens, ours vs transformers: {info['greedy_tokens_agreeing']} of "
        f"{info['greedy_tokens_compared']} agree",
        "",
        f"{'tokenizer':36}{'ours':>10}{'tiktoken':>10}",
        row("  a 100,000-letter word (s)", "{}_tokenizer_word_seconds", lambda s: f"{s:10.3f}", ("ours", "tiktoken")),
        row("  2 MB of mixed text (MB/s)", "{}_tokenizer_text_mb_per_s", lambda r: f"{r:10.2f}", ("ours", "tiktoken")),
        "",
        "targets",
    ]
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        lines.append(f"  {verdict}  {t['target']:54}{t['value']:9.3f} {t['relation']} {t['threshold']}")
    return "\n".join(lines)


