"""The server under load, beside `transformers serve --continuous-batching` on the same weights.

    python bench/serve_bench.py                  # 124M shapes, 2 threads
    python bench/serve_bench.py --quick

Both servers get the float32 Hugging Face copy of the benchmark's random-weight checkpoint
(bench_cache/transformers-124M), since that is what a transformers user would run, and the same
threads (OMP/OPENBLAS_NUM_THREADS). For C concurrent clients (1, 8, 32), each client sends
streaming requests of 64 new tokens one after another for a fixed time; the figures are the
aggregate new tokens per second (from each stream's usage) and the time to the first token
(p50, p95). Ours is also set against the engine's own in-process rate at 32 rows
(bench/engine_bench.py): in turn, a window of our server kept busy by 32 clients (its own count of
generated tokens, from /metrics), then in-process runs with the same load and decoding only; the
check is the median ratio to the same load.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Callable

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_DIR)

CLIENTS = (1, 8, 32)
NEW_TOKENS = 64
PROMPT = "Alan Turing theorized that computers would one day become"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve_bench.py: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("serve_bench.py: the server did not come up")


def one_stream(url: str, model: str) -> tuple[float, int]:
    """(seconds to the first text, new tokens) of one streaming request."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), tokens


def load(url: str, model: str, clients: int, seconds: float) -> dict:
    """C clients sending requests back to back for `seconds`: tokens/s and time to first token."""
    first_token, tokens, lock = [], [0], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < stop_at:
            ttft, n = one_stream(url, model)
            with lock:
                first_token.append(ttft)
                tokens[0] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    first_token.sort()
    return {"tokens_per_s": tokens[0] / wall, "ttft_p50": statistics.median(first_token),
            "ttft_p95": first_token[min(len(first_token) - 1, int(0.95 * len(first_token)))],
            "requests": len(first_token)}


def start_server(kind: str, hf_dir: str, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    if kind == "ours":
        command = [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "--serve", "--model", hf_dir, "--port",
                   str(port), "--max_batch", "32"]
    else:
        command = ["transformers", "serve", hf_dir, "--continuous-batching", "--port", str(port), "--device", "cpu",
                   "--dtype", "float32"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def generated_tokens(url: str) -> float:
    """Our server's own count of the tokens it has generated (gpt2_generated_tokens in /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        return next(s.value for f in families for s in f.samples if s.name == "gpt2_generated_tokens_total")


def steady_rate(url: str, model: str, clients: int, seconds: float, ramp: float = 3.0) -> float:
    """Tokens per second our server generated in a window of `seconds` while `clients` kept it busy, from
    its own counter, so that neither the clients' start nor the last requests' drain counts."""
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            one_stream(url, model)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(ramp)
    start, before = time.perf_counter(), generated_tokens(url)
    time.sleep(seconds)
    rate = (generated_tokens(url) - before) / (time.perf_counter() - start)
    stop.set()
    for thread in threads:
        thread.join()
    return rate


def replenished_tokens_per_second(params: dict, n_head: int, rows: int, n_steps: int) -> float:
    """The clients' load without HTTP: `rows` requests of a 10-token prompt and NEW_TOKENS tokens, each
    replaced by a new one when it finishes, as each client sends its next request; the first ones end
    at staggered lengths, so that finishes spread over the steps as the clients' do. New tokens per
    second over n_steps steps, after NEW_TOKENS steps to settle."""
    from engine_bench import new_engine, random_prompt

    from settings import Settings

    engine = new_engine(params, n_head, rows)
    prompt = random_prompt(np.random.default_rng(rows), params["wte"].shape[0], 10)
    for i in range(rows):
        engine.submit(prompt, Settings(max_tokens=1 + i * NEW_TOKENS // rows))

    def step() -> int:
        events = engine.step()
        for _ in range(sum(event.finish_reason is not None for _, event in events)):
            engine.submit(prompt, Settings(max_tokens=NEW_TOKENS))
        return sum(event.token is not None for _, event in events)

    for _ in range(NEW_TOKENS):
        step()
    start = time.perf_counter()
    tokens = sum(step() for _ in range(n_steps))
    return tokens / (time.perf_counter() - start)


def beside_the_engine(url: str, model: str, in_process: dict[str, Callable[[], float]], pairs: int,
                      seconds: float) -> list[dict]:
    """Our server at 32 clients and the engine in-process at 32 rows, tokens/s, `pairs` times in turn:
    the host's speed drifts by tens of percent within minutes here, so each server window is paired
    with in-process runs just after it."""
    return [{"server": steady_rate(url, model, 32, seconds), **{name: run() for name, run in in_process.items()}}
            for _ in range(pairs)]


def measure(hf_dir: str, threads: int, seconds: float, in_process: dict, pairs: int) -> dict:
    figures = {}
    for kind in ("ours", "transformers"):
        port = free_port()
        process = start_server(kind, hf_dir, port, threads)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, process)
            model = hf_dir  # both name the served model by its path (transformers' /v1/models scans the hub cache)
            one_stream(url, model)  # warm up (transformers loads the model on the first request)
            for clients in CLIENTS:
                print(f"  {kind}, {clients} clients", flush=True)
                figures[f"{kind}_{clients}"] = load(url, model, clients, seconds)
            if kind == "ours":
                print("  ours at 32 clients, in turn with the engine in-process at 32 rows", flush=True)
                figures["beside_engine"] = beside_the_engine(url, model, in_process, pairs, seconds / 4)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="how long each load runs (full: 40, quick: 10)")
    parser.add_argument("--cache_dir", default=os.path.join(REPO_DIR, "bench_cache"))
    args = parser.parse_args(argv)
    from engine_bench import decode_tokens_per_second

    import utils
    from bench import ensure_checkpoint, ensure_transformers_copy
    from harness import limit_threads

    limits = limit_threads(args.threads)  # noqa: F841 (the limits hold while the object lives)
    cache_dir = os.path.abspath(args.cache_dir)
    model_dir = ensure_checkpoint(cache_dir, "124M")
    hf_dir = ensure_transformers_copy(cache_dir, "124M", model_dir)
    hparams = utils.load_hparams(model_dir)
    params = utils.load_params(model_dir, hparams)
    steps = 4 if args.quick else 24
    in_process = {"same load": lambda: replenished_tokens_per_second(params, hparams["n_head"], 32, 2 * steps),
                  "decode only": lambda: decode_tokens_per_second(params, hparams["n_head"], 32, steps)}
    f = measure(hf_dir, args.threads, args.seconds or (10 if args.quick else 40), in_process, 2 if args.quick else 4)
    pairs = f["beside_engine"]
    beside = {name: statistics.median(pair["server"] / pair[name] for pair in pairs) for name in in_process}
    print(f"\n{'clients':>8}{'ours tok/s':>12}{'transf.':>10}{'ratio':>8}{'ours TTFT p50/p95 (s)':>24}"
          f"{'transf. p50/p95':>18}")
    for c in CLIENTS:
        ours, theirs = f[f"ours_{c}"], f[f"transformers_{c}"]
        print(f"{c:8}{ours['tokens_per_s']:12.1f}{theirs['tokens_per_s']:10.1f}"
              f"{ours['tokens_per_s'] / theirs['tokens_per_s']:8.2f}"
              f"{ours['ttft_p50']:12.2f} / {ours['ttft_p95']:<9.2f}"
              f"{theirs['ttft_p50']:8.2f} / {theirs['ttft_p95']:.2f}")
    print("ours at 32 clients (steady window), then the engine in-process at 32 rows with the same load (new\n"
          "requests replacing finished ones) and decoding only, in turn (tokens/s):")
    for pair in f["beside_engine"]:
        print("  " + ", ".join(f"{name} {rate:.1f}" for name, rate in pair.items()))
    ratio = lambda c: f[f"ours_{c}"]["tokens_per_s"] / f[f"transformers_{c}"]["tokens_per_s"]
    checks = [("1 client: ours / transformers serve", ratio(1), ">=", 1.25),
              ("8 clients: ours / transformers serve", ratio(8), ">=", 1.0),
              ("32 clients: ours / transformers serve", ratio(32), ">=", 1.2),
              ("32 clients / the engine in-process, same load (median)", beside["same load"], ">=", 0.9),
              ("8 clients: p95 time to first token (s)", f["ours_8"]["ttft_p95"], "<=", 2.0)]
    for name, value, relation, threshold in checks:
        passed = value >= threshold if relation == ">=" else value <= threshold
        print(f"  {'PASS' if passed else 'FAIL'}  {name:52}{value:9.3f} {relation} {threshold}")
    print(f"  (32 clients / the engine in-process decoding only, median: {beside['decode only']:.3f}; the server's"
          " load adds a 10-token prompt to the steps for every 64 tokens)")


if __name__ == "__main__":
    main()
