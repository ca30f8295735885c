"""Local Ray clusters for the tests: pinned to 127.0.0.1, protected by a token of their own (kept in
the environment, which the CLI's processes inherit, so nothing is written to ~/.ray), and checked
to leave no process behind."""
import contextlib
import os
import secrets
import time

import psutil

RAY_PROCESS_NAMES = ("gcs_server", "raylet")
TOKEN = secrets.token_hex(32)  # one for the session: Ray's token loader keeps the first token it reads


def ray_processes(pid):
    """{pid: name} of the Ray processes among pid's descendants: those it started (a cluster's
    processes are children of the driver that started it, its workers children of the raylet).
    Other people's Ray processes on this machine are not ours to check."""
    found = {}
    for process in psutil.Process(pid).children(recursive=True):
        try:
            name = process.name()
        except psutil.NoSuchProcess:
            continue
        if name in RAY_PROCESS_NAMES or name.startswith("ray::"):
            found[process.pid] = name
    return found


def wait_until_gone(pids, timeout=30):
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = set()
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def check_all_stopped(started):
    assert {"gcs_server", "raylet"} <= set(started.values()), f"not a cluster's processes: {started}"
    left = wait_until_gone(started)
    assert not left, f"Ray processes left behind: {[started[pid] for pid in left]}"


@contextlib.contextmanager
def ray_environment():
    """The environment a local test cluster needs, set before Ray is imported and undone afterwards."""
    changes = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
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
    with ray_environment():
        import ray

        context = ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                           logging_level="WARNING")
        try:
            assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == ["127.0.0.1"]
            yield context.address_info["gcs_address"]
        finally:
            started = ray_processes(os.getpid())
            ray.shutdown()
    check_all_stopped(started)


@contextlib.contextmanager
def two_node_cluster(cpus_per_node=1):
    """ray.cluster_utils.Cluster: a head and one more node, both on this machine at 127.0.0.1; yields
    the head's address, with this process connected to check the nodes."""
    with ray_environment():
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node,
                                                                "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=cpus_per_node)
            cluster.wait_for_nodes()
            cluster.connect()
            nodes = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
            assert nodes == ["127.0.0.1", "127.0.0.1"], nodes
            yield cluster.address
        finally:
            started = ray_processes(os.getpid())
            ray.shutdown()
            cluster.shutdown()
    check_all_stopped(started)
