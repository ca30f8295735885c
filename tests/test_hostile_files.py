"""Model files that are damaged, hostile or lie about the model, read by the loader (utils.load_model).

Each case must end in a one-line GPT2Error naming the file (and the field, where there is one), and
quickly: never a hang, a traceback, a huge allocation, or a model that is not what the files say.
The hypothesis-driven damage of every format is in test_hostile_fuzz.py.
"""
import json
import os
import shutil
import threading

import pytest

import reference
import utils
from errors import GPT2Error


def copy_fixture(name, tmp_path):
    folder = tmp_path / name
    shutil.copytree(reference.fixture_dir(name), folder, ignore=shutil.ignore_patterns(".*"))
    return folder


def one_line_error(folder, load=utils.load_model):
    with pytest.raises(GPT2Error) as raised:
        load(str(folder))
    message = str(raised.value)
    assert message and "\n" not in message
    return message


def within(seconds, function, *args):
    """Run function(*args) in a thread; fail if it is still running after `seconds` (a hang)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as e:  # handed to the test below
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def shard(folder):
    """Split hf-a's model.safetensors into two shards and a model.safetensors.index.json."""
    numpy_io = pytest.importorskip("safetensors.numpy", reason="the safetensors package writes the shards")
    tensors = numpy_io.load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        numpy_io.save_file({name: tensors[name] for name in part}, str(folder / file))
    weight_map = {name: file for file, part in halves.items() for name in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_a_sharded_copy_loads(tmp_path):
    folder = copy_fixture("hf-a", tmp_path)
    shard(folder)
    utils.load_model(str(folder))


def test_a_shard_that_is_a_fifo_is_refused_at_once_naming_it(tmp_path):
    folder = copy_fixture("hf-a", tmp_path)
    shard(folder)
    os.remove(folder / "model-00002-of-00002.safetensors")
    os.mkfifo(folder / "model-00002-of-00002.safetensors")
    message = within(5, one_line_error, folder)  # open() of a FIFO waits for a writer forever
    assert "model-00002-of-00002.safetensors is a FIFO, not a regular file" in message


def test_a_fifo_in_place_of_the_remembered_check_is_not_waited_on(tmp_path):
    folder = copy_fixture("tiny-a", tmp_path)
    os.mkfifo(folder / ".verified.json")
    within(10, utils.load_model, str(folder))
    assert not os.path.isfile(folder / ".verified.json")  # left as it was, the check simply runs every time


def rewrite_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name, config", [("tiny-a", "hparams.json"), ("hf-a", "config.json")])
@pytest.mark.parametrize("n_layer", [10**7, 1])
def test_a_config_claiming_other_layers_than_stored_is_refused_quickly_naming_the_field(tmp_path, name, config,
                                                                                        n_layer):
    import time
    import tracemalloc

    folder = copy_fixture(name, tmp_path)
    rewrite_json(folder / config, lambda c: c.update(n_layer=n_layer))
    start = time.monotonic()
    message = one_line_error(folder)
    seconds = time.monotonic() - start
    tracemalloc.start()
    one_line_error(folder)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert f"{config}: n_layer is {n_layer}, but" in message and "holds 2 layers" in message
    assert seconds < 0.5 and peak < 50 << 20  # before: 21 s and 3 GB for 10^7 layers
