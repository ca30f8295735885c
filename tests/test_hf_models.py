"""Hugging Face format models (config.json, model.safetensors, tokenizer files), against transformers.

The fixtures tests/fixtures/hf-a, hf-b and hf-c were written by transformers' own save_pretrained
(tests/make_hf_fixtures.py): an untied head and the older vocab.json + merges.txt; three layers,
another layer-norm epsilon, two added tokens and names without `transformer.`; float16 weights.
Their reference outputs, from a float64 transformers model, are in tests/fixtures/hf_reference.npz.

Tolerance: 1e-4 absolute on logits, as for the OpenAI-format fixtures (float32 against float64).
float16 weights are converted to float32 exactly, and transformers' reference computed with the very
same values in float64, so the float16 fixture is held to the same 1e-4.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gpt2
import gpt2_pico
import reference
import safetensors_file
import tokenizer_cases
import utils
from conftest import REPO_DIR
from errors import GPT2Error
from tokenizer_cases import NEWER_UNICODE_LETTERS, NEWER_UNICODE_NUMBERS, code_points

HF_FIXTURES = ("hf-a", "hf-b", "hf-c")
HF_REFERENCE = os.path.join(reference.FIXTURES_DIR, "hf_reference.npz")
ATOL = 1e-4
ADDED_TOKEN_TEXTS = ["<|user|>", "Hi<|user|>there <|bot|> ok<|endoftext|>", "<|bot|><|user|><|bot|>",
                     " <|user|> spaced <|bot|>\n", "<|user|", "<|user|><|endoftext|>é"]  # as make_hf_fixtures.py
ENV = dict(os.environ, GPT2_BASE_URL="http://127.0.0.1:9/gpt-2/models", PYTHONIOENCODING="utf-8")


def stored(name):
    with np.load(HF_REFERENCE) as data:
        return {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(name + "/")}


@pytest.fixture(params=HF_FIXTURES)
def hf_name(request):
    return request.param


@pytest.fixture(scope="module")
def models():
    return {name: utils.load_model(reference.fixture_dir(name)) for name in HF_FIXTURES}


def copy_fixture(name, tmp_path):
    folder = tmp_path / name
    shutil.copytree(reference.fixture_dir(name), folder)
    return folder


# ---------------------------------------------------------------- the model


def test_logits_match_stored_transformers_reference_at_every_length(hf_name, models):
    encoder, hparams, params = models[hf_name]
    ref = stored(hf_name)
    tokens = ref["tokens"].tolist()
    assert len(tokens) == hparams["n_ctx"]
    for length in range(1, len(tokens) + 1):
        logits = gpt2.gpt2(tokens[:length], **params, n_head=hparams["n_head"])
        assert logits.dtype == np.float32
        diff = np.abs(logits[:, ref["columns"]] - ref["logits_columns"][:length]).max()
        assert diff <= ATOL, f"length {length}: max abs diff {diff:.3g}"
    assert np.abs(logits[-1] - ref["logits_last"]).max() <= ATOL


def test_greedy_tokens_equal_transformers_generate_for_gpt2_and_pico(hf_name, models):
    encoder, hparams, params = models[hf_name]
    ref = stored(hf_name)
    prompt, expected = ref["cli_prompt"].tolist(), ref["cli_tokens"].tolist()
    assert encoder.encode(reference.CLI_PROMPT) == prompt
    assert gpt2.generate(prompt, params, hparams["n_head"], len(expected)) == expected
    assert gpt2_pico.generate(prompt, params, hparams["n_head"], 8) == expected[:8]


def test_added_tokens_are_matched_whole_as_transformers_does(hf_name, models):
    encoder = models[hf_name][0]
    ref = stored(hf_name)
    for i, text in enumerate(ADDED_TOKEN_TEXTS):
        assert encoder.encode(text) == ref[f"added_text_ids_{i}"].tolist(), text
        assert encoder.decode(encoder.encode(text)) == text


def test_what_varies_between_checkpoints_is_read_from_config_and_files(models):
    a, b, c = (models[name][1] for name in HF_FIXTURES)
    info = {name: utils.open_model(reference.fixture_dir(name)).info for name in HF_FIXTURES}
    assert (a["n_layer"], a["n_head"], a["n_embd"], info["hf-a"].tied) == (2, 2, 8, False)
    assert (b["n_layer"], b["n_head"], b["n_vocab"], info["hf-b"].layer_norm_epsilon) == (3, 3, 50259, 1e-6)
    assert models["hf-a"][2]["lm_head"].shape == (50257, 8) and "lm_head" not in models["hf-b"][2]
    assert models["hf-b"][2]["blocks"][0]["ln_1"]["eps"] == 1e-6
    assert info["hf-c"].stored_dtypes == ("F16",) and info["hf-c"].converted and not info["hf-a"].converted
    assert set(a) == set(c) == {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}, "hparams holds hyperparameters only"


def test_float32_weights_are_read_only_views_of_the_file_and_float16_is_converted_once(models):
    _, _, params = models["hf-a"]
    for array in (params["wte"], params["lm_head"], params["blocks"][1]["mlp"]["c_fc"]["w"]):
        assert array.dtype == np.float32 and not array.flags.owndata and not array.flags.writeable
    _, _, half = models["hf-c"]
    assert half["wte"].dtype == np.float32 and half["wte"].flags.owndata


def test_our_safetensors_views_equal_the_safetensors_package_bit_for_bit(hf_name):
    numpy_loader = pytest.importorskip("safetensors.numpy", reason="the reference reader is the safetensors package")
    path = os.path.join(reference.fixture_dir(hf_name), "model.safetensors")
    expected = numpy_loader.load_file(path)
    ours = safetensors_file.read_tensors(path)
    assert sorted(ours) == sorted(expected)
    for name, (_, array) in ours.items():
        assert array.shape == expected[name].shape and array.tobytes() == expected[name].tobytes(), name


def test_bfloat16_becomes_the_float32_that_torch_gives():
    torch = pytest.importorskip("torch", reason="torch makes the bfloat16 values")
    values = torch.randn(1000, dtype=torch.float32).to(torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    converted = safetensors_file.to_float32("BF16", bits)
    assert converted.dtype == np.float32 and converted.tobytes() == values.to(torch.float32).numpy().tobytes()


def test_logits_match_live_transformers(hf_name, models):
    pytest.importorskip("transformers", reason="the live comparison needs torch==2.13.0 and transformers")
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(reference.fixture_dir(hf_name), dtype=torch.float32)
    model = model.to(torch.float64).eval()
    encoder, hparams, params = models[hf_name]
    tokens = reference.reference_tokens(hparams["n_vocab"], hparams["n_ctx"], seed=5)
    expected = reference.hf_logits(model, tokens)
    assert np.abs(gpt2.gpt2(tokens, **params, n_head=hparams["n_head"]) - expected).max() <= ATOL


# ---------------------------------------------------------------- the tokenizer


@pytest.mark.parametrize("name", ["hf-a", "hf-b"])
def test_token_ids_equal_transformers_tokenizer_on_the_tokenizer_cases(name, models):
    """The project's 55,000 tokenizer test strings, and each with added tokens around it. Strings with
    letters newer than Unicode 16 are left out: the tokenizers library classes them by its own tables
    (as tiktoken does, see test_encoder.py)."""
    pytest.importorskip("transformers", reason="the reference tokenizer is transformers'")
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(reference.fixture_dir(name))
    encoder = models[name][0]
    newer = frozenset(map(chr, code_points(NEWER_UNICODE_LETTERS) | code_points(NEWER_UNICODE_NUMBERS)))
    cases = [text for text in tokenizer_cases.all_cases() if newer.isdisjoint(text)]
    if name == "hf-b":
        cases += [f"<|user|>{text}<|bot|>" for text in cases[::50]]
    expected = theirs(cases)["input_ids"]
    mismatches = [(text, ids) for text, ids in zip(cases, expected) if encoder.encode(text) != ids]
    assert not mismatches, f"{len(mismatches)} differ, first: {mismatches[0][0]!r}"


# ---------------------------------------------------------------- damaged and unsupported files


def one_line_gpt2_error(folder):
    with pytest.raises(GPT2Error) as raised:
        utils.load_model(str(folder))
    message = str(raised.value)
    assert "\n" not in message
    return message


def rewrite_header(path, change):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "truncated"),
    ("tiny file", "truncated"),
    ("huge header length", "header claims"),
    ("header not JSON", "not valid JSON"),
    ("offsets past the end", "truncated or damaged"),
    ("overlapping offsets", "overlap or leave a gap"),
    ("shape that lies", "has shape"),
    ("unknown dtype", "does not know"),
    ("missing tensor", "has no tensor h.1.ln_2.bias"),
])
def test_a_damaged_safetensors_file_is_a_one_line_error_naming_it(tmp_path, damage, expected):
    folder = copy_fixture("hf-b", tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n_header = int.from_bytes(data[:8], "little")
    if damage == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "tiny file":
        path.write_bytes(data[:5])
    elif damage == "huge header length":
        path.write_bytes((10**15).to_bytes(8, "little") + data[8:])
    elif damage == "header not JSON":
        path.write_bytes(data[:8] + b"{" * n_header + data[8 + n_header :])
    elif damage == "offsets past the end":  # the last tensor claims a million floats, the file has far fewer
        def too_long(header):
            last = max((name for name in header if name != "__metadata__"), key=lambda k: header[k]["data_offsets"])
            begin = header[last]["data_offsets"][0]
            header[last].update(dtype="F32", shape=[10**6], data_offsets=[begin, begin + 4 * 10**6])
        rewrite_header(path, too_long)
    elif damage == "overlapping offsets":
        def overlap(header):
            first, second = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")[:2]
            header[second[1]]["data_offsets"] = [0, header[second[1]]["data_offsets"][1] - second[0]]
        rewrite_header(path, overlap)
    elif damage == "shape that lies":
        rewrite_header(path, lambda h: h["wpe.weight"].update(shape=[10**9, 12]))
    elif damage == "unknown dtype":
        rewrite_header(path, lambda h: h["wpe.weight"].update(dtype="F8_E4M3"))
    elif damage == "missing tensor":  # a well-formed file that lacks one tensor, written by the safetensors package
        numpy_io = pytest.importorskip("safetensors.numpy", reason="the safetensors package writes the file")
        tensors = numpy_io.load_file(str(path))
        del tensors["h.1.ln_2.bias"]
        numpy_io.save_file(tensors, str(path))
    message = one_line_gpt2_error(folder)
    assert expected in message and ("model.safetensors" in message or damage == "missing tensor"), message


def test_a_tensor_of_the_wrong_shape_for_config_json_names_both_shapes(tmp_path):
    folder = copy_fixture("hf-b", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, n_positions=49)))
    message = one_line_gpt2_error(folder)
    assert "wpe.weight has shape [48, 12], but config.json needs [49, 12]" in message


@pytest.mark.parametrize("field, value", [("model_type", "llama"), ("activation_function", "relu"),
                                          ("scale_attn_by_inverse_layer_idx", True),
                                          ("reorder_and_upcast_attn", True)])
def test_a_config_that_is_not_gpt2_is_refused_naming_the_field(tmp_path, field, value):
    folder = copy_fixture("hf-a", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, **{field: value})))
    assert field in one_line_gpt2_error(folder)


def test_pytorch_model_bin_is_refused_with_the_reason_and_how_to_convert(tmp_path):
    folder = copy_fixture("hf-a", tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    message = one_line_gpt2_error(folder)
    assert "pytorch_model.bin" in message and "run code" in message and "save_pretrained" in message


def test_a_tokenizer_with_ids_beyond_the_embeddings_is_refused(tmp_path):
    folder = copy_fixture("hf-b", tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({"id": 50300, "content": "<|beyond|>"})  # the embeddings have 50259 rows
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert "tokenizer has ids up to 50300" in one_line_gpt2_error(folder)


def test_a_directory_without_a_model_says_what_it_looked_for(tmp_path):
    assert "config.json" in one_line_gpt2_error(tmp_path)


# ---------------------------------------------------------------- the Hugging Face cache


def fake_hub_cache(root, name, fixture="hf-a", revision="0123abcd"):
    repo = root / ("models--" + name.replace("/", "--"))
    shutil.copytree(reference.fixture_dir(fixture), repo / "snapshots" / revision)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_name_is_found_in_the_cache_at_refs_main(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    root = tmp_path / "cache"
    cache = root / "hub" if variable == "HF_HOME" else root
    cache.mkdir(parents=True)
    fake_hub_cache(cache, "someone/tiny-gpt2", fixture="hf-b", revision="old0000")  # another revision
    snapshot = fake_hub_cache(cache, "someone/tiny-gpt2")  # the one refs/main names
    monkeypatch.setenv(variable, str(root))
    import hf_model

    assert hf_model.find_in_hub_cache("someone/tiny-gpt2") == str(snapshot)
    assert utils.open_model("someone/tiny-gpt2").info.tied is False


def test_a_name_missing_from_the_cache_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    message = one_line_gpt2_error("openai-community/gpt2")
    assert str(tmp_path) in message and "huggingface-cli download openai-community/gpt2" in message


# ---------------------------------------------------------------- the command line


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *map(str, args)],
                          capture_output=True, env=ENV, timeout=120)


def test_cli_model_path_prints_transformers_greedy_continuation(hf_name, models):
    encoder = models[hf_name][0]
    expected = stored(hf_name)["cli_tokens"].tolist()[:10]
    result = run_cli(reference.CLI_PROMPT, "--model", reference.fixture_dir(hf_name), "--n_tokens_to_generate", 10,
                     "--ignore_eos")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == encoder.decode(expected).encode("utf-8")
    assert (b"float16" in result.stderr or b"F16" in result.stderr) == (hf_name == "hf-c")


def test_cli_scores_and_batches_on_a_hugging_face_model(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(reference.SCORE_TEXT, encoding="utf-8")
    score = run_cli("--score", text, "--model", reference.fixture_dir("hf-b"), "--json")
    assert score.returncode == 0 and json.loads(score.stdout)["n_tokens_scored"] > 100, score.stderr.decode()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi <|user|> there"}\n{"prompt": "<|bot|>"}\n', encoding="utf-8")
    batch = run_cli("--prompts_file", prompts, "--model", reference.fixture_dir("hf-b"), "--n_tokens_to_generate", 5)
    assert batch.returncode == 0 and len(batch.stdout.splitlines()) == 2, batch.stderr.decode()


def test_model_and_models_dir_together_are_a_one_line_error():
    result = run_cli("hi", "--model", "x", "--models_dir", "y")
    stderr = result.stderr.decode()
    assert result.returncode == 2 and stderr.count("\n") == 1 and "--models_dir goes with --model_size" in stderr


def test_model_and_model_size_together_are_a_one_line_error():
    result = run_cli("hi", "--model", "x", "--model_size", "355M")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr.decode()


def test_cli_model_accepts_an_openai_format_directory():
    result = run_cli(reference.CLI_PROMPT, "--model", reference.fixture_dir("tiny-a"), "--n_tokens_to_generate", 4)
    assert result.returncode == 0, result.stderr.decode()


def test_verify_on_a_safetensors_model_says_there_are_no_checksums():
    result = run_cli("hi", "--model", reference.fixture_dir("hf-a"), "--n_tokens_to_generate", 2, "--verify")
    assert result.returncode == 0 and b"holds none" in result.stderr

