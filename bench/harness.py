"""How the benchmark measures, whatever it measures: thread limits, timing, whole processes, and
measurements taken again when other processes disturbed them.

On a machine shared with other work, a busy neighbour does not just take its share: with as many
BLAS threads as cores, threads that wait for each other at every product can make a step many times
slower. So each round first waits for the CPUs to go quiet, and each measurement is taken again (up
to TRIES times, keeping the least disturbed) when other processes used over DISTURBED of the
machine's CPU time meanwhile (from /proc/stat minus our own CPU time). That share is stored next to
every sample.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

from threadpoolctl import threadpool_limits

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TRIES = 3  # attempts at a measurement disturbed by other processes
DISTURBED = 0.10  # share of the machine's CPU time used by others above which we measure again


def limit_threads(threads: int) -> object:
    """The same thread count for this process (NumPy, torch) and, through the environment, its children.

    Returns threadpoolctl's limits object: the limits hold while it lives.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    limits = threadpool_limits(threads)  # OpenBLAS under NumPy, and any OpenMP runtime already loaded
    import torch  # imported after the variables are set, so that its OpenMP runtime reads them too

    torch.set_num_threads(threads)
    return limits


def seconds(function: object, *args: object) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


# ---------------------------------------------------------------- a machine shared with others


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs together (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    ticks = os.sysconf("SC_CLK_TCK")
    return (total - idle - iowait) / ticks, total / ticks


def our_cpu_seconds() -> float:
    """CPU seconds used by this process (all its threads) and by its children that have exited."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def others_share_during(measure: object) -> tuple[object, float]:
    """Run measure(); return its result and the share of the machine's CPU time others used meanwhile."""
    busy_before, total_before = machine_cpu_seconds()
    ours_before = our_cpu_seconds()
    result = measure()
    busy_after, total_after = machine_cpu_seconds()
    others = (busy_after - busy_before) - (our_cpu_seconds() - ours_before)
    return result, max(others, 0.0) / max(total_after - total_before, 1e-9)


def undisturbed(measure: object) -> tuple[object, float]:
    """measure()'s result, taken again if other processes were busy meanwhile: (result, others' share).

    Keeps the least disturbed of at most TRIES attempts. (For measurements under ~0.2 s the share is
    coarse: /proc/stat counts in 10 ms ticks.)
    """
    best = None
    for _ in range(TRIES):
        result, share = others_share_during(measure)
        if best is None or share < best[1]:
            best = (result, share)
        if share <= DISTURBED:
            break
    return best


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait up to max_wait s until other processes leave the CPUs idle; return the last busy share seen."""
    time.sleep(0.3)  # let our own BLAS/OpenMP threads stop spinning first
    start = time.perf_counter()
    while True:
        busy_before, total_before = machine_cpu_seconds()
        time.sleep(0.5)
        busy_after, total_after = machine_cpu_seconds()
        busy = (busy_after - busy_before) / max(total_after - total_before, 1e-9)
        if busy <= threshold or time.perf_counter() - start >= max_wait:
            return busy
        print(f"    other processes use {busy:.0%} of the CPUs: waiting", flush=True)
        time.sleep(2)


class Samples(dict):
    """{figure name: [one value per round]}, and for each "<name>_others_share": the share other
    processes took of the machine's CPU time while that value was measured."""

    def add(self, name: str, value: float) -> None:
        self.setdefault(name, []).append(value)

    def measure(self, name: str, measure: object) -> None:
        """Add measure()'s result (a number), taken undisturbed if possible, and others' share meanwhile."""
        result, share = undisturbed(measure)
        self.add(name, result)
        self.add(name + "_others_share", share)

    def disturbed_share(self) -> float:
        """The share of measurements during which other processes used over DISTURBED of the CPU time."""
        shares = [s for name, values in self.items() if name.endswith("_others_share") for s in values]
        return sum(s > DISTURBED for s in shares) / len(shares)


# ---------------------------------------------------------------- whole processes


def run_measured(command: list[str]) -> tuple[float, float, float, bytes]:
    """Run a command to completion: (wall seconds, peak RSS bytes, CPU seconds, stdout). Fails loudly."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as result:
        launcher = [sys.executable, os.path.join(BENCH_DIR, "launcher.py"), result.name]
        subprocess.run(launcher + command, stdout=out, stderr=err, cwd=REPO_DIR, check=True)
        wall, maxrss_kib, cpu, status = (float(field) for field in result.read().split())
        if status:
            err.seek(0)
            message = err.read().decode("utf-8", "replace")[-2000:]
            raise SystemExit(f"bench.py: {' '.join(command[:3])} ... exited with {status:.0f}:\n{message}")
        out.seek(0)
        return wall, maxrss_kib * 1024, cpu, out.read()  # Linux reports ru_maxrss in KiB
