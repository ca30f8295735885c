"""--ray: the same jobs on a local Ray cluster, written byte for byte as one process writes them.

One cluster (ray.init with 2 CPUs, on 127.0.0.1, with token authentication) is shared by the
module; the CLI runs as a separate driver that connects to it by address. Every run uses
--threads 1, in one process and in each worker: BLAS results depend on the thread count.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_DIR, symlinked_models_dir
from ray_cluster import check_all_stopped, local_cluster, ray_processes

if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its settings from the environment once
    pytest.skip("Ray is not installed: pip install -r requirements-ray.txt", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(num_cpus=2) as address:
        yield address


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-b"})


def cli(*args):
    return [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "--threads", "1", *map(str, args)]


def run_cli(*args):
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models")
    return subprocess.run(cli(*args), capture_output=True, env=env, timeout=300)


def same_output(cluster, *args):
    """(single-process stdout, --ray stdout), after checking both runs succeeded."""
    alone, on_ray = run_cli(*args), run_cli(*args, "--ray", cluster)
    assert alone.returncode == 0, alone.stderr.decode()
    assert on_ray.returncode == 0, on_ray.stderr.decode()
    assert alone.stdout != b""
    return alone.stdout, on_ray.stdout


def write_prompts(path, n):
    path.write_text("".join(f"Prompt number {i} says\n" for i in range(n)), encoding="utf-8")
    return path


def write_corpus(path, n):
    path.write_text("".join(json.dumps({"text": f"Document {i} " + "is about words " * (i % 9), "id": i}) + "\n"
                            for i in range(n)) + '{"text": ""}\n', encoding="utf-8")
    return path


def write_batch(path, n):
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "gpt-3.5-turbo-instruct", "prompt": f"Request {i}", "max_tokens": 5, "seed": i,
                       "logprobs": 2, "n": 2}} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.9", "--top_k", "10", "--seed", "4"]],
                         ids=["greedy", "seeded"])
def test_generation_on_ray_is_byte_identical(cluster, models_dir, tmp_path, sampling):
    alone, on_ray = same_output(cluster, "--prompts_file", write_prompts(tmp_path / "prompts.txt", 50),
                                "--n_tokens_to_generate", 6, "--batch_size", 2, "--models_dir", models_dir, *sampling)
    assert alone == on_ray and alone.count(b"\n") == 50


def test_corpus_scoring_on_ray_is_byte_identical(cluster, models_dir, tmp_path):
    alone, on_ray = same_output(cluster, "--score", write_corpus(tmp_path / "docs.jsonl", 150), "--json",
                                "--models_dir", models_dir)
    assert alone == on_ray and alone.count(b"\n") == 151


def test_batch_lines_on_ray_are_byte_identical(cluster, models_dir, tmp_path):
    alone, on_ray = same_output(cluster, "--prompts_file", write_batch(tmp_path / "batch.jsonl", 30),
                                "--batch_size", 2, "--models_dir", models_dir)
    assert alone == on_ray and alone.count(b"\n") == 31


def test_workers_report_their_memory(cluster, models_dir, tmp_path):
    result = run_cli("--prompts_file", write_prompts(tmp_path / "p.txt", 4), "--n_tokens_to_generate", 2,
                     "--models_dir", models_dir, "--ray", cluster)
    assert b"ray: 2 workers; memory per worker in MiB, RSS " in result.stderr, result.stderr.decode()


def test_more_workers_than_the_cluster_has_cpus_is_a_one_line_error(cluster, models_dir, tmp_path):
    result = run_cli("--prompts_file", write_prompts(tmp_path / "p.txt", 2), "--models_dir", models_dir,
                     "--ray", cluster, "--ray_workers", 3)
    assert result.returncode == 1 and result.stderr.decode().strip().count("\n") == 0, result.stderr.decode()
    assert b"the Ray cluster has 2 CPUs: give at most --ray_workers 2 with --threads 1" in result.stderr


def test_a_head_that_does_not_answer_is_a_one_line_error(models_dir, tmp_path):
    result = run_cli("--prompts_file", write_prompts(tmp_path / "p.txt", 2), "--models_dir", models_dir,
                     "--ray", "127.0.0.1:9")
    assert result.returncode == 1 and result.stderr.decode().strip().count("\n") == 0
    assert b"no Ray head answers at 127.0.0.1:9" in result.stderr


def test_a_wrong_token_is_a_one_line_error_that_says_which_token(cluster, models_dir, tmp_path):
    env = dict(os.environ, RAY_AUTH_TOKEN="0" * 64)
    result = subprocess.run(cli("--prompts_file", write_prompts(tmp_path / "p.txt", 2), "--models_dir", models_dir,
                                "--ray", cluster), capture_output=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.decode().strip().count("\n") == 0, result.stderr.decode()
    assert b"RAY_AUTH_TOKEN" in result.stderr


def test_without_ray_the_error_says_how_to_install_it(models_dir, tmp_path):
    code = (f"import sys; sys.path.insert(0, {REPO_DIR!r}); sys.modules['ray'] = None; import cli; "
            "cli.main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, "--prompts_file", write_prompts(tmp_path / "p.txt", 2),
                             "--models_dir", models_dir, "--ray"], capture_output=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "gpt2.py: error: --ray needs Ray: pip install -r requirements-ray.txt"


def test_ray_goes_with_a_job_only():
    result = run_cli("Hello", "--ray")
    assert result.returncode == 2 and b"--ray goes with --prompts_file or --score FILE.jsonl" in result.stderr


def test_ctrl_c_keeps_whole_records_leaves_no_ray_process_and_a_rerun_finishes_it(cluster, models_dir, tmp_path):
    """The CLI starts a local cluster of its own (no address); SIGINT while the job runs ends it with
    status 130, only whole records written and none of its Ray processes left; running again (on the
    shared cluster) writes exactly what an uninterrupted run writes."""
    prompts = write_prompts(tmp_path / "prompts.txt", 1200)
    args = ["--prompts_file", prompts, "--n_tokens_to_generate", 30, "--models_dir", models_dir]
    complete = run_cli(*args).stdout
    output = tmp_path / "out.jsonl"
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models")
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)  # as a user runs it: the CLI sets up its own cluster's token
    process = subprocess.Popen(cli(*args, "--output", output, "--ray"), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not output.exists() or output.read_bytes().count(b"\n") < 20):
        time.sleep(0.05)
    started = ray_processes(process.pid)  # its own cluster's, as they are just before the interrupt
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, process.stderr.read().decode()
    written = output.read_bytes()
    assert 20 <= written.count(b"\n") < 1200 and written.endswith(b"\n")
    assert complete.startswith(written)
    check_all_stopped(started)
    resumed = run_cli(*args, "--output", output, "--ray", cluster)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert output.read_bytes() == complete


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_restarted_and_the_output_is_identical(cluster, models_dir, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.txt", 1500)
    args = ["--prompts_file", prompts, "--n_tokens_to_generate", 30, "--models_dir", models_dir]
    complete = run_cli(*args).stdout
    output = tmp_path / "out.jsonl"
    env = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models")
    process = subprocess.Popen(cli(*args, "--output", output, "--ray", cluster), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not output.exists() or output.read_bytes().count(b"\n") < 40):
        time.sleep(0.05)
    import psutil

    busy = [p for p in psutil.process_iter(["name", "cmdline"]) if "ChunkWorker.compute" in " ".join(
        p.info["cmdline"] or [p.info["name"] or ""])]
    assert busy, "no worker was computing a chunk"
    busy[0].kill()
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    assert output.read_bytes() == complete
