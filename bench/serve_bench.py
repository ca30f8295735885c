"""The server under load, beside `transformers serve --continuous-batching` on the same weights.

    python bench/serve_bench.py                  # 124M shapes, 2 threads
    python bench/serve_bench.py --quick

Both servers get the float32 Hugging Face copy of the benchmark's random-weight checkpoint
(bench_cache/transformers-124M), since that is what a transformers user would run, and the same
threads (OMP/OPENBLAS_NUM_THREADS). For C concurrent clients (1, 8, 32), each client sends
streaming requests of 64 new tokens one after another for a fixed time; the figures are the
aggregate new tokens per second (from each stream's usage) and the time to the first token
(p50, p95). Ours is also set against the engine's own in-process rate at 32 rows
(bench/engine_bench.py), measured in the same run.
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


def measure(hf_dir: str, threads: int, seconds: float) -> dict:
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
    engine_32 = decode_tokens_per_second(params, hparams["n_head"], 32, 4 if args.quick else 24)
    del params
    f = measure(hf_dir, args.threads, args.seconds or (10 if args.quick else 40))
    print(f"\n{'clients':>8}{'ours tok/s':>12}{'transf.':>10}{'ratio':>8}{'ours TTFT p50/p95 (s)':>24}"
          f"{'transf. p50/p95':>18}")
    for c in CLIENTS:
        ours, theirs = f[f"ours_{c}"], f[f"transformers_{c}"]
        print(f"{c:8}{ours['tokens_per_s']:12.1f}{theirs['tokens_per_s']:10.1f}"
              f"{ours['tokens_per_s'] / theirs['tokens_per_s']:8.2f}"
              f"{ours['ttft_p50']:12.2f} / {ours['ttft_p95']:<9.2f}"
              f"{theirs['ttft_p50']:8.2f} / {theirs['ttft_p95']:.2f}")
    print(f"engine in-process, 32 rows: {engine_32:.1f} tokens/s")
    ratio = lambda c: f[f"ours_{c}"]["tokens_per_s"] / f[f"transformers_{c}"]["tokens_per_s"]
    checks = [("1 client: ours / transformers serve", ratio(1), ">=", 1.25),
              ("8 clients: ours / transformers serve", ratio(8), ">=", 1.0),
              ("32 clients: ours / transformers serve", ratio(32), ">=", 1.2),
              ("32 clients / the engine in-process at 32 rows", f["ours_32"]["tokens_per_s"] / engine_32, ">=", 0.9),
              ("8 clients: p95 time to first token (s)", f["ours_8"]["ttft_p95"], "<=", 2.0)]
    for name, value, relation, threshold in checks:
        passed = value >= threshold if relation == ">=" else value <= threshold
        print(f"  {'PASS' if passed else 'FAIL'}  {name:52}{value:9.3f} {relation} {threshold}")


if __name__ == "__main__":
    main()
