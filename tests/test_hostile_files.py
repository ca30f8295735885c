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


def rewrite_header(path, change):
    """Change model.safetensors' JSON header in place, keeping the tensors' bytes."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = change(header)
    text = text if isinstance(text, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])


NESTED = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's recursion limit, and valid JSON


@pytest.mark.parametrize("name, file", [
    ("tiny-a", "hparams.json"), ("tiny-a", "encoder.json"), ("hf-a", "config.json"), ("hf-a", "vocab.json"),
    ("hf-a", "tokenizer_config.json"), ("hf-b", "tokenizer.json"), ("hf-a", "model.safetensors.index.json"),
    ("hf-a", "model.safetensors"),
])
def test_deeply_nested_json_is_a_one_line_error_naming_the_file(tmp_path, name, file):
    folder = copy_fixture(name, tmp_path)
    if file == "model.safetensors.index.json":
        shard(folder)
    if file == "model.safetensors":
        rewrite_header(folder / file, lambda header: NESTED)
    else:
        (folder / file).write_bytes(NESTED)
    assert file in one_line_error(folder)


def test_bytes_after_the_last_tensor_are_refused(tmp_path):
    folder = copy_fixture("hf-a", tmp_path)
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\0" * 4)
    assert "its tensors need" in one_line_error(folder)


@pytest.mark.parametrize("field, value", [
    ("dtype", ["F32"]), ("dtype", 32), ("shape", "8"), ("shape", [8.0, 8]), ("shape", [0, 10**30]),
    ("shape", [True, 8]), ("data_offsets", {"0": 1}),
])
def test_a_safetensors_entry_of_the_wrong_type_is_refused_naming_the_tensor(tmp_path, field, value):
    folder = copy_fixture("hf-a", tmp_path)
    rewrite_header(folder / "model.safetensors", lambda header: header["transformer.wpe.weight"].update({field: value}))
    message = one_line_error(folder)
    assert "model.safetensors" in message and "transformer.wpe.weight" in message and field in message


@pytest.mark.parametrize("weight_map", [["a"], {"transformer.wpe.weight": 3}, {"transformer.wpe.weight": None},
                                        {"transformer.wpe.weight": ["x"]}, {"transformer.wpe.weight": ""}])
def test_a_weight_map_of_the_wrong_type_is_refused_naming_the_field(tmp_path, weight_map):
    folder = copy_fixture("hf-a", tmp_path)
    shard(folder)
    rewrite_json(folder / "model.safetensors.index.json", lambda index: index.update(weight_map=weight_map))
    assert "model.safetensors.index.json: weight_map" in one_line_error(folder)


def test_a_tensor_stored_in_two_shards_is_refused_naming_both(tmp_path):
    numpy_io = pytest.importorskip("safetensors.numpy", reason="the safetensors package writes the shards")
    folder = copy_fixture("hf-a", tmp_path)
    weight_map = shard(folder)
    first, second = (str(folder / f"model-0000{i}-of-00002.safetensors") for i in (1, 2))
    name = next(name for name, file in weight_map.items() if file.startswith("model-00001"))
    tensors = numpy_io.load_file(second)
    numpy_io.save_file({**tensors, name: numpy_io.load_file(first)[name] + 1}, second)
    message = one_line_error(folder)
    assert f"tensor {name} is stored in both" in message


@pytest.mark.parametrize("value", ["false", "true", 0, None, [False]])
def test_tie_word_embeddings_that_is_not_a_bool_is_refused(tmp_path, value):
    folder = copy_fixture("hf-a", tmp_path)
    rewrite_json(folder / "config.json", lambda config: config.update(tie_word_embeddings=value))
    assert "config.json: tie_word_embeddings must be true or false" in one_line_error(folder)


@pytest.mark.parametrize("field, value", [
    ("n_embd", "8"), ("n_embd", 8.0), ("n_head", True), ("n_layer", [2]), ("vocab_size", -1), ("n_positions", None),
    ("n_inner", "32"), ("layer_norm_epsilon", "1e-5"), ("activation_function", ["gelu_new"]), ("model_type", {}),
])
def test_a_config_field_of_the_wrong_type_is_refused_naming_it(tmp_path, field, value):
    folder = copy_fixture("hf-a", tmp_path)
    rewrite_json(folder / "config.json", lambda config: config.update({field: value}))
    message = one_line_error(folder)
    named = {"vocab_size": "n_vocab", "n_positions": "n_ctx"}.get(field, field)
    assert "config.json" in message and named in message


@pytest.mark.parametrize("name, file", [("tiny-a", "encoder.json"), ("hf-a", "vocab.json"),
                                        ("hf-b", "tokenizer.json")])
@pytest.mark.parametrize("bad_id", [-1, 1.5, True, "7", None])
def test_a_token_id_that_is_not_a_non_negative_integer_is_refused(tmp_path, name, file, bad_id):
    folder = copy_fixture(name, tmp_path)
    vocab = (lambda data: data["model"]["vocab"]) if file == "tokenizer.json" else (lambda data: data)
    rewrite_json(folder / file, lambda data: vocab(data).update({"!": bad_id}))
    message = one_line_error(folder)
    assert file in message and "'!'" in message and "not an integer >= 0" in message


def test_an_added_token_with_a_negative_id_is_refused(tmp_path):
    folder = copy_fixture("hf-b", tmp_path)
    rewrite_json(folder / "tokenizer.json", lambda data: data["added_tokens"].append({"id": -1, "content": "<x>"}))
    assert "tokenizer.json" in one_line_error(folder)


@pytest.mark.parametrize("name, file", [("hf-a", "vocab.json"), ("hf-b", "tokenizer.json")])
def test_a_damaged_hugging_face_tokenizer_says_to_copy_it_not_to_download_it(tmp_path, name, file):
    folder = copy_fixture(name, tmp_path)
    (folder / file).write_text("<html>")
    message = one_line_error(folder)
    assert "copy or restore it" in message and "download" not in message.replace("does not download", "")
