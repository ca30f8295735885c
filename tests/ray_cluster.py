"""Local Ray clusters for the tests: pinned to 127.0.0.1, protected by a token of their own (kept in
the environment, which the CLI's processes inherit, so nothing is written to ~/.ray), and checked
to leave no process behind."""
import contextlib
import os
import secrets
import time

import psutil

RAY_PROCESS_NAMES = ("gcs_server", "raylet")


def ray_processes():
    """The pids of every Ray process on the machine (others' too: callers compare before and after)."""
    pids = set()
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        if name in RAY_PROCESS_NAMES or name.startswith("ray::"):
            pids.add(process.pid)
    return pids


def wait_until_gone(pids, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"}
        if not alive:
            return set()
        time.sleep(0.2)
    return alive


@contextlib.contextmanager
def ray_environment():
    """The environment a local test cluster needs, set before Ray is imported and undone afterwards."""
    changes = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def local_cluster(num_cpus=2):
    """ray.init's own local cluster, this process its driver: yields its GCS address."""
    before = ray_processes()
    with ray_environment():
        import ray

        context = ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                           logging_level="WARNING")
        try:
            assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == ["127.0.0.1"]
            yield context.address_info["gcs_address"]
        finally:
            ray.shutdown()
    left = wait_until_gone(ray_processes() - before)
    assert not left, f"Ray processes left behind: {left}"
