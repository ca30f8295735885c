"""--ray [ADDRESS]: a prompts file's, a Batch file's or a corpus's job on a Ray cluster.

Unlike a run in one process (jobs.run_locally), the job's chunks go to worker actors, a few at a
time each; the driver (this process) writes their records in input order as they come back, under
the same resume rules, so the output is byte for byte what one process writes with the same
--threads. Each worker loads the model once. The loader memory-maps the checkpoint read-only, so
the workers on a node share one copy of the weights in the page cache (each worker's unique memory
is its activations and caches); a node without the files downloads them once, under download.py's
lock. A worker that dies is restarted by Ray and its chunks are run again; only the driver writes,
and only whole chunks it has received, so nothing is lost or written twice.

Plain actors, not Ray Data's map_batches over an actor pool: the driver must write in input order
as results arrive, start at any record when resuming, and bound how far ahead of the oldest
unwritten chunk the workers run; a dict of pending chunk futures does all three in a few lines,
and an actor's max_restarts with max_task_retries is exactly "restart the worker, redo its chunk".
"""
import contextlib
import dataclasses
import os
import secrets
import socket
import sys
import tempfile
from typing import Any, BinaryIO, Iterator

import jobs
import utils
from errors import GPT2Error

INSTALL_HINT = "--ray needs Ray: pip install -r requirements-ray.txt"
CHUNKS_PER_WORKER = 2  # in flight at once: a worker has its next chunk while the driver takes the last one
LOOKAHEAD_PER_WORKER = 4  # chunks past the oldest unwritten one that may be computed (bounds the driver's memory)
MAX_RESTARTS = 3  # a worker that dies more often than this (out of memory on every try) ends the job
REPO_DIR = os.path.dirname(os.path.abspath(__file__))
CODE_ONLY = ["/tests/", "/docs/", "/bench/", "/references/", "/models/", "/bench_cache/", "*.png", "*.html", ".git",
             "__pycache__", ".venv"]


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a worker finds the model: --model's directory or hub name, or --model_size in --models_dir
    (downloaded there if that node lacks it). Paths are absolute: a worker runs in a folder of its own."""
    model: str | None
    model_size: str
    models_dir: str
    base_url: str | None

    def load(self) -> jobs.Model:
        if self.model is not None:
            encoder, hparams, params = utils.load_model(self.model)
        else:
            encoder, hparams, params = utils.load_encoder_hparams_and_params(self.model_size, self.models_dir,
                                                                             self.base_url)
        return jobs.Model(encoder, hparams, params)


class ChunkWorker:
    """One worker: the model, loaded once, and the chunks it is given, computed one at a time."""

    def __init__(self, source: ModelSource, threads: int):
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # the same BLAS threads as a local run with --threads gives the same bits
        self.model = source.load()

    def compute(self, part: jobs.Job, begin: int, end: int) -> jobs.Chunk:
        return jobs.compute_chunk(part, self.model, begin, end)

    def memory(self) -> dict:
        """This process's memory: rss counts the mapped weights' pages it touched, uss only its own pages,
        pss its own plus its share of the pages it shares with other processes."""
        import psutil

        info = psutil.Process().memory_full_info()
        return {"pid": os.getpid(), "rss": info.rss, "uss": info.uss, "pss": info.pss}


def import_ray(address: str | None) -> Any:
    """Ray, set up for this run. A local cluster listens on 127.0.0.1 only and is protected by a token of
    its own, passed to its processes in the environment (Ray would otherwise write one to ~/.ray)."""
    if address is None or host_of(address) in ("127.0.0.1", "localhost", "::1"):
        # read when Ray is imported: this node's address is the loopback one (Ray would take the machine's IP)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address is None and "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    os.environ.setdefault("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")  # CODE_ONLY has them, without a warning
    try:
        import ray
    except ImportError:
        raise GPT2Error(INSTALL_HINT) from None
    return ray


def host_of(address: str) -> str:
    return address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")


def check_reachable(ray: Any, address: str) -> None:
    """Refuse at once a head that does not answer: ray.init would retry it for ever."""
    if address == "auto":
        try:  # what Ray itself finds: RAY_ADDRESS, or the cluster `ray start` last started on this machine
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except (ImportError, ConnectionError, ValueError):
            address = ""
        if not address:
            raise GPT2Error("--ray auto found no Ray cluster on this machine: start one with `ray start --head`, "
                            "or give the head's address")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise GPT2Error(f"no Ray head answers at {address} ({getattr(e, 'strerror', None) or e}): check the "
                        "address that `ray start --head` printed, or give --ray without one for a local cluster") \
            from None


def connect(ray: Any, address: str | None) -> None:
    runtime_env = {"working_dir": REPO_DIR, "excludes": CODE_ONLY}  # the code reaches every node; weights do not
    options = {"runtime_env": runtime_env, "include_dashboard": False, "log_to_driver": False,
               "logging_level": "WARNING", "configure_logging": True}
    if address is not None:
        check_reachable(ray, address)
    with stderr_kept() as said:  # a head that refuses our token logs a line a second for 20 s, in C++
        try:
            if address is None:
                ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", **options)
            else:
                ray.init(address=address, **options)
            failure = None
        except (ConnectionError, RuntimeError, ValueError) as e:
            failure = first_line(e)
    said = said[0]
    if failure is None:
        sys.stderr.write(said)
    elif address is None:
        raise GPT2Error(f"cannot start a local Ray cluster: {failure}; run `ray stop` if an old one is stuck, "
                        "or give --ray an address")
    elif "Unauthenticated" in said or "AuthToken" in said:
        raise GPT2Error(f"the Ray cluster at {address} refused this run's token: set RAY_AUTH_TOKEN to its token "
                        "(`ray get-auth-token` on the head prints it)")
    else:
        raise GPT2Error(f"the Ray head at {address} answers but refused this run ({failure}): check that it runs "
                        f"Ray {ray.__version__}, as here")


@contextlib.contextmanager
def stderr_kept() -> Iterator[list[str]]:
    """Standard error's file descriptor sent to a temporary file for the block (C++ writes there too);
    yields a list that holds what was written once the block is done."""
    sys.stderr.flush()
    said: list[str] = []
    with tempfile.TemporaryFile() as kept:
        saved = os.dup(2)
        os.dup2(kept.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            said.append(kept.read().decode("utf-8", "replace"))


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def run(job: jobs.Job, first: int, out: BinaryIO, bar: Any, address: str | None, source: ModelSource,
        threads: int, n_workers: int | None) -> list[dict]:
    """Run the job's chunks on the cluster (a local one if address is None) and write their records;
    the workers' memory, measured after their last chunk. Ctrl-C ends the workers (and a local cluster)."""
    ray = import_ray(address)
    connect(ray, address)
    workers = []
    try:
        n_cpus = int(ray.cluster_resources().get("CPU", 1))
        if n_workers is not None and n_workers * threads > n_cpus:  # the rest would never start, holding their chunks
            most = max(1, n_cpus // threads)
            raise GPT2Error(f"the Ray cluster has {n_cpus} CPUs: give at most --ray_workers {most} with --threads "
                            f"{threads}, or add nodes")
        n_workers = n_workers or max(1, n_cpus // threads)
        remote = ray.remote(num_cpus=threads, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(ChunkWorker)
        workers = [remote.remote(source, threads) for _ in range(n_workers)]
        jobs.write_in_order(cluster_chunks(ray, job, first, workers), first, out, bar)
        return ray.get([worker.memory.remote() for worker in workers])
    except ray.exceptions.RayActorError as e:
        raise GPT2Error(f"a Ray worker died {MAX_RESTARTS + 1} times ({first_line(e)}): give the workers more "
                        "memory, or a smaller --batch_size") from None
    except ray.exceptions.RayTaskError as e:  # the worker's own error, say a model that is not on its node
        cause = e.cause if isinstance(getattr(e, "cause", None), GPT2Error) else e
        raise GPT2Error(f"a Ray worker failed: {first_line(cause)}") from None
    finally:
        for worker in workers:
            ray.kill(worker)
        ray.shutdown()  # disconnects; a local cluster, started by ray.init above, stops with its processes


def cluster_chunks(ray: Any, job: jobs.Job, first: int, workers: list) -> Iterator[jobs.Chunk]:
    """The chunks' results as they arrive, each worker kept CHUNKS_PER_WORKER chunks busy, never more
    than LOOKAHEAD_PER_WORKER x workers chunks past the oldest one not yet back."""
    todo = list(reversed(job.chunks(first)))
    pending: dict[Any, tuple[Any, int]] = {}  # future -> (worker, begin)
    load = {i: 0 for i in range(len(workers))}
    limit = LOOKAHEAD_PER_WORKER * len(workers)

    def submit(i: int) -> None:
        begin, end = todo.pop()
        part = dataclasses.replace(job, items=job.items[begin:end], offset=begin,
                                   tokens=None if job.tokens is None else job.tokens[begin:end])
        pending[workers[i].compute.remote(part, begin, end)] = (i, begin)
        load[i] += 1

    def oldest() -> int:
        return min([begin for _, begin in pending.values()] + ([todo[-1][0]] if todo else []))

    while todo or pending:
        for i in sorted(load, key=load.get):
            while todo and load[i] < CHUNKS_PER_WORKER and todo[-1][0] - oldest() < limit * job.chunk_size:
                submit(i)
        ready, _ = ray.wait(list(pending), num_returns=1)
        i, _ = pending.pop(ready[0])
        load[i] -= 1
        yield ray.get(ready[0])


def say_memory(memory: list[dict]) -> None:
    mib = lambda key: "/".join(f"{m[key] / 2**20:.0f}" for m in memory)  # noqa: E731
    print(f"gpt2.py: ray: {len(memory)} workers; memory per worker in MiB, RSS {mib('rss')}, USS {mib('uss')}, "
          f"PSS {mib('pss')} (the weights' pages are shared)", file=sys.stderr)
