"""--ray on two nodes (ray.cluster_utils.Cluster, both on this machine): the workers spread over
the nodes, and the output is still byte for byte what one process writes with the same --threads."""
import importlib.util
import json

import pytest

from conftest import run_gpt2, symlinked_models_dir
from ray_cluster import two_node_cluster

if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its settings from the environment once
    pytest.skip("Ray is not installed: pip install -r requirements-ray.txt", allow_module_level=True)


def run_cli(*args):
    return run_gpt2("--threads", "1", *args, timeout=300)


@pytest.mark.slow
def test_a_job_on_two_nodes_is_byte_identical(tmp_path_factory, tmp_path):
    models_dir = symlinked_models_dir(tmp_path_factory, {"124M": "tiny-b"})
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i} " + "has words " * (i % 13)}) + "\n"
                            for i in range(300)), encoding="utf-8")
    args = ["--score", docs, "--json", "--models_dir", models_dir]
    alone = run_cli(*args)
    with two_node_cluster() as address:
        on_ray = run_cli(*args, "--ray", address)
    assert on_ray.returncode == 0, on_ray.stderr.decode()
    assert b"ray: 2 workers" in on_ray.stderr
    assert on_ray.stdout == alone.stdout and alone.stdout.count(b"\n") == 300
