"""Reading OpenAI's TensorFlow checkpoint format without TensorFlow (tf_checkpoint.py, checked by utils.py)."""
import json
import os
import shutil

import numpy as np
import pytest

import reference
import tf_checkpoint
import utils
from conftest import load_fixture
from errors import GPT2Error
from http_fixture_server import FixtureServer

INDEX, DATA = "model.ckpt.index", "model.ckpt.data-00000-of-00001"


def tensorflow_variables(model_dir):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is the reference reader (pip install tensorflow-cpu)")
    prefix = os.path.join(model_dir, "model.ckpt")
    return {name: tf.train.load_variable(prefix, name) for name, _ in tf.train.list_variables(prefix)}


def read_tensors(model_dir):
    return utils.map_checkpoint_tensors(str(model_dir), utils.load_hparams(str(model_dir)))


def test_every_tensor_equals_tensorflow_bit_for_bit(fixture_name):
    model_dir = reference.fixture_dir(fixture_name)
    expected = tensorflow_variables(model_dir)
    ours = read_tensors(model_dir)
    assert sorted(ours) == sorted(expected)
    for name, array in ours.items():
        assert array.dtype == expected[name].dtype == np.float32, name
        assert array.shape == expected[name].shape, name
        assert array.tobytes() == expected[name].tobytes(), name


def test_params_are_read_only_float32_views_into_the_data_file(fixture_name):
    _, params = load_fixture(fixture_name)
    arrays = [params["wte"], params["wpe"], params["ln_f"]["g"], params["blocks"][0]["attn"]["c_attn"]["w"]]
    for array in arrays:
        assert array.dtype == np.float32
        assert not array.flags.owndata, "a copy was made instead of a view of the memory map"
        assert not array.flags.writeable, "the memory map must be read-only"


def test_params_nest_like_picogpt_with_conv1d_weights_squeezed_to_2d(fixture_name):
    hparams, params = load_fixture(fixture_name)
    n_embd = hparams["n_embd"]
    assert sorted(params) == ["blocks", "ln_f", "wpe", "wte"]
    assert len(params["blocks"]) == hparams["n_layer"]
    block = params["blocks"][-1]
    assert sorted(block) == ["attn", "ln_1", "ln_2", "mlp"]
    assert block["attn"]["c_attn"]["w"].shape == (n_embd, 3 * n_embd)
    assert block["mlp"]["c_proj"]["w"].shape == (4 * n_embd, n_embd)
    assert block["mlp"]["c_fc"]["b"].shape == (4 * n_embd,)
    assert params["wte"].shape == (hparams["n_vocab"], n_embd)


def test_flipping_any_index_byte_gives_a_clear_error_or_the_same_tensors(copied_model_dir):
    """Every byte that matters is covered by a block CRC, the magic number or a bounds check;
    the others (footer padding, the unused metaindex handle) may change without effect."""
    original = {name: array.copy() for name, array in read_tensors(copied_model_dir).items()}
    index_path = copied_model_dir / INDEX
    good = index_path.read_bytes()
    outcomes = {"error": 0, "same": 0}
    for position in range(len(good)):
        damaged = bytearray(good)
        damaged[position] ^= 0xFF
        index_path.write_bytes(bytes(damaged))
        try:
            tensors = read_tensors(copied_model_dir)
        except GPT2Error as e:
            assert INDEX in str(e) and "\n" not in str(e)
            outcomes["error"] += 1
            continue
        assert all(np.array_equal(tensors[name], original[name]) for name in original), position
        outcomes["same"] += 1
    assert outcomes["error"] > 0.9 * len(good), outcomes


def test_truncated_index_gives_a_clear_error_naming_the_file(copied_model_dir):
    index_path = copied_model_dir / INDEX
    good = index_path.read_bytes()
    for length in range(len(good)):
        index_path.write_bytes(good[:length])
        with pytest.raises(GPT2Error, match="model.ckpt.index"):
            read_tensors(copied_model_dir)


@pytest.mark.parametrize("keep", [0, 1000, -4])
def test_truncated_data_file_gives_a_clear_error_naming_the_file(copied_model_dir, keep):
    data_path = copied_model_dir / DATA
    good = data_path.read_bytes()
    data_path.write_bytes(good[:keep] if keep >= 0 else good[:keep])
    with pytest.raises(GPT2Error, match="model.ckpt.data-00000-of-00001"):
        read_tensors(copied_model_dir)


def write_hparams(model_dir, **changes):
    path = model_dir / "hparams.json"
    hparams = json.loads(path.read_text())
    hparams.update(changes)
    path.write_text(json.dumps(hparams))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_layer": 3}, "n_layer is 3, but .* holds 2 layers"),  # the checkpoint has 2 layers
        ({"n_embd": 32, "n_head": 2}, "needs float32"),  # shapes disagree
        ({"n_vocab": 50000}, "model/wte"),
        ({"n_ctx": 10**12}, "model/wpe"),  # absurd sizes are refused, never allocated
    ],
)
def test_hparams_that_do_not_match_the_checkpoint_are_an_error(copied_model_dir, changes, message):
    write_hparams(copied_model_dir, **changes)
    with pytest.raises(GPT2Error, match=message):
        read_tensors(copied_model_dir)


def test_a_transposed_tensor_of_the_right_size_is_an_error_naming_it_and_both_shapes(copied_model_dir):
    """c_fc/w stored as [1, 4*n_embd, n_embd] has as many floats as [1, n_embd, 4*n_embd]: only a
    check of the whole shape, not of the element count, catches it before it is silently reshaped."""
    pytest.importorskip("tensorflow", reason="TensorFlow writes the checkpoint (pip install tensorflow-cpu)")
    from references.openai_checkpoint import random_weights, save_checkpoint

    hparams = utils.load_hparams(str(copied_model_dir))
    weights = random_weights(hparams, seed=0)
    name = "model/h1/mlp/c_fc/w"
    n_embd = hparams["n_embd"]
    weights[name] = np.ascontiguousarray(weights[name].transpose(0, 2, 1))  # [1, 4*n_embd, n_embd]
    save_checkpoint(weights, str(copied_model_dir))
    with pytest.raises(GPT2Error) as raised:
        read_tensors(copied_model_dir)
    message = str(raised.value)
    assert name in message, message
    assert f"[1, {4 * n_embd}, {n_embd}]" in message, f"the stored shape is not named: {message}"
    assert f"[1, {n_embd}, {4 * n_embd}]" in message, f"the expected shape is not named: {message}"
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"n_vocab": 50257}', '{"n_vocab": "50257", "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 2}',
     '{"n_vocab": 50257, "n_ctx": 32, "n_embd": 16, "n_head": 3, "n_layer": 2}',
     '{"n_vocab": 50257, "n_ctx": 0, "n_embd": 16, "n_head": 2, "n_layer": 2}'],
)
def test_invalid_hparams_json_gives_a_clear_error_naming_the_file(copied_model_dir, text):
    (copied_model_dir / "hparams.json").write_text(text)
    with pytest.raises(GPT2Error, match="hparams.json"):
        utils.load_hparams(str(copied_model_dir))


@pytest.mark.parametrize("name", [INDEX, DATA, "hparams.json"])
def test_missing_checkpoint_file_gives_a_clear_error_naming_it(copied_model_dir, name):
    hparams = utils.load_hparams(str(copied_model_dir))
    (copied_model_dir / name).unlink()
    with pytest.raises(GPT2Error, match=name.replace(".", r"\.")):
        utils.load_hparams(str(copied_model_dir))
        utils.load_params(str(copied_model_dir), hparams)


def test_index_of_a_checkpoint_is_parsed_as_tensorflow_lists_it(fixture_name):
    """dtype, shape and byte extent of each entry agree with TensorFlow's own listing."""
    model_dir = reference.fixture_dir(fixture_name)
    expected = tensorflow_variables(model_dir)
    entries = tf_checkpoint.read_index(os.path.join(model_dir, "model.ckpt"))
    extents = []
    for name, array in expected.items():
        dtype, shape, shard, offset, size, _ = entries[name]
        assert (dtype, shape, shard, size) == (tf_checkpoint.DT_FLOAT, array.shape, 0, array.nbytes)
        extents.append((offset, size))
    extents.sort()
    assert all(a[0] + a[1] <= b[0] for a, b in zip(extents, extents[1:])), "tensors overlap"


# ---- integrity: every tensor's CRC32C, checked once per version of the files


def test_a_flipped_byte_in_any_tensor_is_an_error_naming_it_and_the_file_is_moved_aside(copied_model_dir):
    """One flip in each tensor in turn (the first byte of the first tensor, the last byte of the last):
    each is refused with the tensor's name, and the damaged file is renamed, never deleted."""
    data_path = copied_model_dir / DATA
    good = data_path.read_bytes()
    entries = tf_checkpoint.read_index(str(copied_model_dir / "model.ckpt"))
    for i, (name, entry) in enumerate(sorted(entries.items(), key=lambda item: item[1].offset)):
        damaged = bytearray(good)
        damaged[entry.offset + (i * 7919) % entry.size] ^= 0x10
        data_path.write_bytes(bytes(damaged))
        with pytest.raises(GPT2Error) as raised:
            read_tensors(copied_model_dir)
        message = str(raised.value)
        assert f"tensor {name} does not match" in message and "\n" not in message, message
        aside = copied_model_dir / (DATA + ".damaged")
        assert aside.read_bytes() == bytes(damaged) and not data_path.exists()
        aside.unlink()
    data_path.write_bytes(good)
    assert read_tensors(copied_model_dir)


def test_a_passed_check_is_remembered_until_the_files_change(copied_model_dir, monkeypatch):
    calls = []
    real_check = tf_checkpoint.first_corrupt_tensor
    monkeypatch.setattr(tf_checkpoint, "first_corrupt_tensor", lambda *args: calls.append(1) or real_check(*args))
    read_tensors(copied_model_dir)
    read_tensors(copied_model_dir)
    assert len(calls) == 1, "the second load should trust the remembered pass"
    os.utime(copied_model_dir / DATA)  # a new modification time: another version of the file
    read_tensors(copied_model_dir)
    assert len(calls) == 2


def test_verify_checks_again_even_when_a_pass_is_remembered(copied_model_dir):
    """A byte changed behind our back, with size and modification time restored, passes a normal
    load (the check is remembered), but not --verify."""
    read_tensors(copied_model_dir)
    data_path = copied_model_dir / DATA
    stat = data_path.stat()
    damaged = bytearray(data_path.read_bytes())
    damaged[1000] ^= 0x01
    data_path.write_bytes(bytes(damaged))
    os.utime(data_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    read_tensors(copied_model_dir)
    hparams = utils.load_hparams(str(copied_model_dir))
    with pytest.raises(GPT2Error, match="does not match the CRC32C"):
        utils.map_checkpoint_tensors(str(copied_model_dir), hparams, verify=True)


def test_a_read_only_model_directory_is_checked_without_remembering(copied_model_dir, monkeypatch):
    monkeypatch.setattr("integrity.os.replace", lambda *args: (_ for _ in ()).throw(PermissionError(13, "denied")))
    read_tensors(copied_model_dir)  # no error: the pass simply is not remembered
    assert not (copied_model_dir / ".verified.json").exists()



def test_crc32c_gives_the_castagnoli_check_value():
    """0xE3069283 is CRC-32C's published check value, the CRC of the 9 bytes "123456789" (RFC 3720's
    polynomial; the "check" column of the catalogue of parametrised CRC algorithms)."""
    assert tf_checkpoint.crc32c(b"123456789") == 0xE3069283


PIECE = tf_checkpoint.CRC_PIECE


@pytest.mark.parametrize("size", [0, 1, PIECE - 1, PIECE, 2 * PIECE + 7])
def test_crc32c_of_a_mapped_array_fed_in_pieces_equals_that_of_its_bytes(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    data.flags.writeable = False  # as the memory map of a data file is
    assert tf_checkpoint.crc32c(data) == tf_checkpoint.crc32c(data.tobytes())


def test_a_check_with_the_pure_python_crc32c_says_on_stderr_why_it_is_slow(copied_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(tf_checkpoint, "CRC32C_IN_C", False)
    read_tensors(copied_model_dir)
    (line,) = capsys.readouterr().err.splitlines()
    assert "pure-Python" in line and DATA in line
    read_tensors(copied_model_dir)  # the pass is remembered: no check, nothing to say
    assert capsys.readouterr().err == ""


def test_damage_found_by_two_runs_at_once_is_moved_aside_once(copied_model_dir, monkeypatch):
    """Runs started together check the same new file together. The one that finds the damage last
    must not fail to rename a file that is gone, nor move aside a fresh copy: it says it was done."""
    data_path = copied_model_dir / DATA
    damaged = bytearray(data_path.read_bytes())
    damaged[-1] ^= 0x01
    data_path.write_bytes(bytes(damaged))
    real_check = tf_checkpoint.first_corrupt_tensor

    def check_while_another_run_moves_it_aside(*args):
        data_path.rename(copied_model_dir / (DATA + ".damaged"))
        return real_check(*args)

    monkeypatch.setattr(tf_checkpoint, "first_corrupt_tensor", check_while_another_run_moves_it_aside)
    with pytest.raises(GPT2Error) as raised:
        read_tensors(copied_model_dir)
    assert "another run has moved it aside already, run again" in str(raised.value)
    assert sorted(path.name for path in copied_model_dir.glob(DATA + "*")) == [DATA + ".damaged"]
    assert (copied_model_dir / (DATA + ".damaged")).read_bytes() == bytes(damaged)


@pytest.mark.parametrize("fetched, checks", [(DATA, 2), ("vocab.bpe", 1)])
def test_a_download_is_checked_once_and_only_if_it_brought_checkpoint_files(copied_model_dir, monkeypatch,
                                                                          fetched, checks):
    """The first load checks the copied model; a download that fetches the data file anew checks it
    once (under the download lock, and the load after it trusts that); one of vocab.bpe does not."""
    calls = []
    real_check = tf_checkpoint.first_corrupt_tensor
    monkeypatch.setattr(tf_checkpoint, "first_corrupt_tensor", lambda *args: calls.append(1) or real_check(*args))
    models_dir = str(copied_model_dir.parent)
    utils.load_encoder_hparams_and_params("124M", models_dir)
    served = copied_model_dir.parent.parent / "served"
    shutil.copytree(copied_model_dir, served / "124M")
    (copied_model_dir / fetched).unlink()
    with FixtureServer(served) as server:
        utils.load_encoder_hparams_and_params("124M", models_dir, server.url)
        assert [request.path for request in server.requests] == [f"/124M/{fetched}"]
    assert len(calls) == checks


def test_both_formats_name_the_one_tensor_table_and_store_it_as_their_readers_expect():
    """gpt2_tensors' table, named as openai/gpt-2's model.py and transformers' GPT2Model name them."""
    import gpt2_tensors

    table = gpt2_tensors.tensor_table({"n_vocab": 10, "n_ctx": 4, "n_embd": 6, "n_head": 2, "n_layer": 2}, tied=False)
    openai = {gpt2_tensors.openai_name(path): gpt2_tensors.openai_shape(path, shape) for path, shape in table.items()}
    hf = {gpt2_tensors.huggingface_name(path): shape for path, shape in table.items()}
    assert openai["model/h1/mlp/c_fc/w"] == (1, 6, 24) and openai["model/ln_f/g"] == (6,)
    assert hf["h.1.mlp.c_fc.weight"] == (6, 24) and hf["h.0.ln_2.bias"] == (6,) and hf["lm_head.weight"] == (10, 6)
    assert len(openai) == len(hf) == len(table) == 2 + 2 * 12 + 2 + 1
