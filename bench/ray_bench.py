"""Offline jobs' figures: corpus scoring packed against one document at a time, and --ray's cost.

    python bench/ray_bench.py --cache_dir /work/bench_cache           # 124M shapes (random weights)
    python bench/ray_bench.py --cache_dir /work/bench_cache --quick   # smoke run: fewer documents and prompts

- corpus scoring: documents of 50 to 300 tokens (a fixed seed), scored in this process with 2
  threads as `--score docs.jsonl` scores them (chunks of 64, short documents packed into passes),
  against one document per forward pass (gpt2.token_logprobs, what a loop over `--score` computes
  without its process starts) and against a `--score` process per document (timed on a few).
  Goal: at least 3x the tokens/s of one document at a time.
- Ray's overhead: a prompts-file job run by the command line in one process with --threads 2,
  and with --ray (a local cluster it starts itself) as 2 workers of 1 thread each. Wall time of the
  whole command, cluster start included. Goal: at most 15% more. The workers' RSS, USS and PSS.
- scaling: the same job on a simulated two-node cluster (ray.cluster_utils, 1 CPU per node) with 1
  worker and with 2; both nodes are this machine's 2 cores, so 2x is the ceiling.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import corpus  # noqa: E402
import gpt2  # noqa: E402
import utils  # noqa: E402
from bench import ensure_checkpoint  # noqa: E402
from harness import REPO_DIR, limit_threads  # noqa: E402

FULL = dict(documents=10_000, alone=1_000, processes=3, prompts=2_000, new_tokens=4)
QUICK = dict(documents=300, alone=100, processes=2, prompts=200, new_tokens=4)
CHUNK = 64  # as jobs.CHUNK_DOCUMENTS


def make_documents(encoder: object, n: int, seed: int = 0) -> list[str]:
    """n texts of 50 to 300 tokens each: random vocabulary entries, decoded (re-encoding changes a few)."""
    rng = np.random.default_rng(seed)
    return [encoder.decode(rng.integers(300, 50_000, rng.integers(50, 301)).tolist()) for _ in range(n)]


def corpus_figures(model_dir: str, config: dict, work: str) -> dict:
    limits = limit_threads(2)  # noqa: F841 (held while this function runs)
    encoder, hparams, params = utils.load_model(model_dir)
    texts = make_documents(encoder, config["documents"])
    documents = [corpus.Document(i + 1, i, text) for i, text in enumerate(texts)]
    stride = hparams["n_ctx"] // 2
    started = time.perf_counter()
    n_tokens = 0
    for begin in range(0, len(documents), CHUNK):
        n_tokens += corpus.score_documents(documents[begin : begin + CHUNK], encoder, params, hparams["n_head"],
                                           stride, with_tokens=False)[1]
    packed = n_tokens / (time.perf_counter() - started)
    started, alone_tokens = time.perf_counter(), 0
    for text in texts[: config["alone"]]:
        tokens = encoder.encode(text)
        alone_tokens += len(gpt2.token_logprobs(tokens, params, hparams["n_head"], stride))
    alone = alone_tokens / (time.perf_counter() - started)
    started, process_tokens = time.perf_counter(), 0
    for i, text in enumerate(texts[: config["processes"]]):
        path = os.path.join(work, f"doc{i}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = subprocess.run(cli("--score", path, "--json", "--model", model_dir, "--threads", "2"),
                                capture_output=True, check=True)
        process_tokens += json.loads(result.stdout)["n_tokens_scored"]
    processes = process_tokens / (time.perf_counter() - started)
    return {"documents": len(texts), "tokens": n_tokens, "packed_tokens_per_s": packed,
            "alone_tokens_per_s": alone, "process_per_document_tokens_per_s": processes,
            "speedup_vs_alone": packed / alone, "speedup_vs_processes": packed / processes}


def cli(*args: str) -> list[str]:
    return [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)]


def timed(command: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=env)
    if result.returncode != 0:
        sys.exit(f"ray_bench: {' '.join(command[:4])} ... failed: {result.stderr.decode()[-500:]}")
    return time.perf_counter() - started, result


def memory_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.decode().splitlines() if "memory per worker" in line]
    return lines[-1].removeprefix("gpt2.py: ray: ") if lines else "(not reported)"


def ray_figures(model_dir: str, config: dict, work: str) -> dict:
    prompts = os.path.join(work, "prompts.txt")
    with open(prompts, "w", encoding="utf-8") as f:
        f.writelines(f"Prompt number {i} says that\n" for i in range(config["prompts"]))
    job = ["--prompts_file", prompts, "--model", model_dir, "--n_tokens_to_generate", str(config["new_tokens"]),
           "--ignore_eos", "--batch_size", "8"]
    one_process, _ = timed(cli(*job, "--threads", "2"))
    on_ray, result = timed(cli(*job, "--threads", "1", "--ray", "--ray_workers", "2"))
    figures = {"prompts": config["prompts"], "one_process_2_threads_s": one_process, "ray_2_workers_s": on_ray,
               "overhead": on_ray / one_process - 1, "memory": memory_line(result)}
    figures.update(scaling(job))
    return figures


def scaling(job: list[str]) -> dict:
    """The job on a simulated two-node cluster, with one worker and with two."""
    import ray_jobs

    ray = ray_jobs.import_ray(None)  # 127.0.0.1 and a token of this run's own, which the commands inherit
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        one, _ = timed(cli(*job, "--threads", "1", "--ray", cluster.address, "--ray_workers", "1"))
        two, result = timed(cli(*job, "--threads", "1", "--ray", cluster.address, "--ray_workers", "2"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"two_nodes_1_worker_s": one, "two_nodes_2_workers_s": two, "scaling": one / two,
            "two_nodes_memory": memory_line(result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache_dir", default=os.path.join(REPO_DIR, "bench_cache"))
    parser.add_argument("--quick", action="store_true", help="fewer documents and prompts: a smoke run")
    parser.add_argument("--only", choices=("corpus", "ray"), default=None, help="run one part only")
    parser.add_argument("--documents", type=int, default=None, help="this many documents (default: 10,000)")
    parser.add_argument("--prompts", type=int, default=None, help="this many prompts (default: 2,000)")
    args = parser.parse_args()
    config = dict(QUICK if args.quick else FULL)
    for name in ("documents", "prompts"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    config["alone"] = min(config["alone"], config["documents"])
    model_dir = ensure_checkpoint(args.cache_dir, "124M")
    with tempfile.TemporaryDirectory() as work:
        if args.only in (None, "corpus"):
            c = corpus_figures(model_dir, config, work)
            print(f"corpus scoring, {c['documents']} documents ({c['tokens']} tokens), 2 threads: packed "
                  f"{c['packed_tokens_per_s']:.0f} tokens/s; one document a pass {c['alone_tokens_per_s']:.0f} "
                  f"({c['speedup_vs_alone']:.2f}x, goal 3x); a --score process per document "
                  f"{c['process_per_document_tokens_per_s']:.0f} ({c['speedup_vs_processes']:.1f}x)", flush=True)
        if args.only in (None, "ray"):
            r = ray_figures(model_dir, config, work)
            print(f"ray, {r['prompts']} prompts: one process with 2 threads {r['one_process_2_threads_s']:.1f} s, "
                  f"--ray with 2 workers of 1 thread {r['ray_2_workers_s']:.1f} s: overhead {r['overhead']:+.1%} "
                  f"(goal at most +15%); {r['memory']}")
            print(f"two simulated nodes (1 CPU each): 1 worker {r['two_nodes_1_worker_s']:.1f} s, 2 workers "
                  f"{r['two_nodes_2_workers_s']:.1f} s: {r['scaling']:.2f}x; {r['two_nodes_memory']}")


if __name__ == "__main__":
    main()
