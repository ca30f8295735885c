"""GPT-2 checkpoints in Hugging Face's format: config.json, model.safetensors and the tokenizer files.

This module knows what a Hugging Face GPT-2 is: which config fields the model here can run (and
which it cannot), the tensors' names (with or without the `transformer.` prefix) and shapes, how
they nest into picoGPT's params dict, and where the Hugging Face cache keeps downloaded models.
safetensors_file.py reads the tensors; encoder.py reads the tokenizer.
"""
import dataclasses
import json
import os
import re

import numpy as np

import gpt2_tensors
import safetensors_file
from errors import GPT2Error
from gpt2_tensors import ModelInfo

UNSUPPORTED = {  # config field -> the value the model here computes (transformers' default)
    "activation_function": "gelu_new",
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
}
LAYER_NAME = re.compile(r"(?:transformer\.)?h\.(\d+)\.")  # a tensor of layer N: h.N.attn.c_attn.weight, ...
COPY_AGAIN = "copy the model's files there again from where they came from"
PICKLE_ADVICE = (
    "this tool does not load pytorch_model.bin, because unpickling it can run code stored in the file; "
    "convert it once with transformers: GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR) "
    "writes model.safetensors"
)


def load_config(model_dir: str) -> tuple[dict, ModelInfo]:
    """config.json as picoGPT's hparams (n_vocab, n_ctx, n_embd, n_head, n_layer) and what else it says
    of the model (n_inner, layer_norm_epsilon, tie_word_embeddings)."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise GPT2Error(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise GPT2Error(f"{path} is not valid JSON ({e}); {COPY_AGAIN}") from None
    except RecursionError:
        raise GPT2Error(f"{path} is not a config: its JSON is nested too deeply; {COPY_AGAIN}") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise GPT2Error(f"{path}: model_type is {model_type!r}, not 'gpt2': this tool runs GPT-2 models only")
    for field, value in UNSUPPORTED.items():
        if config.get(field, value) != value:
            raise GPT2Error(f"{path}: {field} is {config[field]!r}; the GPT-2 here needs {value!r}")
    hparams = {"n_vocab": config.get("vocab_size"), "n_ctx": config.get("n_positions", config.get("n_ctx")),
               "n_embd": config.get("n_embd"), "n_head": config.get("n_head"), "n_layer": config.get("n_layer")}
    for key, value in hparams.items():
        if not (type(value) is int and value > 0):
            raise GPT2Error(f"{path}: {key} must be a positive integer, not {value!r}")
    if hparams["n_embd"] % hparams["n_head"]:
        raise GPT2Error(f"{path}: n_embd ({hparams['n_embd']}) must be a multiple of n_head ({hparams['n_head']})")
    n_inner = config.get("n_inner") or 4 * hparams["n_embd"]
    eps = config.get("layer_norm_epsilon", 1e-5)
    if not (type(n_inner) is int and n_inner > 0 and isinstance(eps, (int, float)) and 0 < eps < 1):
        raise GPT2Error(f"{path}: n_inner ({n_inner!r}) or layer_norm_epsilon ({eps!r}) is out of range")
    tied = config.get("tie_word_embeddings", True)
    if type(tied) is not bool:  # bool("false") is True: a string would silently tie the embeddings
        raise GPT2Error(f"{path}: tie_word_embeddings must be true or false, not {tied!r}")
    info = ModelInfo(model_dir, "huggingface", layer_norm_epsilon=float(eps),
                     n_inner=None if n_inner == 4 * hparams["n_embd"] else n_inner, tied=tied)
    return hparams, info


def read_weights(model_dir: str) -> tuple[dict[str, tuple[str, np.ndarray]], str]:
    """All tensors of model.safetensors (or of the shards its index lists), and the file to name in errors."""
    single = os.path.join(model_dir, "model.safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return safetensors_file.read_tensors(single), single
    if os.path.isfile(index):
        return read_shards(model_dir, index), index
    if os.path.isfile(os.path.join(model_dir, "pytorch_model.bin")):
        raise GPT2Error(f"{model_dir}: {PICKLE_ADVICE}")
    raise GPT2Error(f"{model_dir} has config.json but no model.safetensors")


def read_shards(model_dir: str, index: str) -> dict[str, tuple[str, np.ndarray]]:
    """All tensors of the shards that model.safetensors.index.json lists, each stored once and where
    the index says: a tensor in two shards would otherwise be taken from whichever is read last."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except OSError as e:
        raise GPT2Error(f"cannot read {index}: {e.strerror}") from None
    except (ValueError, RecursionError, KeyError, TypeError):
        raise GPT2Error(f"{index} is not a safetensors index (JSON with a weight_map); {COPY_AGAIN}") from None
    if not (isinstance(weight_map, dict) and all(isinstance(shard, str) and shard for shard in weight_map.values())):
        raise GPT2Error(f"{index}: weight_map must map each tensor name to a shard's file name; {COPY_AGAIN}")
    tensors, stored_in = {}, {}
    for shard in sorted(set(weight_map.values())):
        for name, tensor in safetensors_file.read_tensors(os.path.join(model_dir, os.path.basename(shard))).items():
            if name in stored_in:
                raise GPT2Error(f"{index}: tensor {name} is stored in both {stored_in[name]} and {shard}, "
                                f"so which one the model holds is unclear; {COPY_AGAIN}")
            if weight_map.get(name) != shard:
                raise GPT2Error(f"{index}: weight_map puts {name} in {weight_map.get(name)}, but it is stored in "
                                f"{shard}; {COPY_AGAIN}")
            tensors[name], stored_in[name] = tensor, shard
    return tensors


def load_params(model_dir: str, hparams: dict, info: ModelInfo) -> tuple[dict, ModelInfo]:
    """picoGPT's params dict from model.safetensors, checked against config.json, and the info with the
    dtypes found. float32 weights stay views of the memory map; float16 and bfloat16 ones are converted once."""
    tensors, path = read_weights(model_dir)
    check_layer_count(hparams["n_layer"], tensors, path)
    prefixed = any(name.startswith("transformer.") for name in tensors)
    arrays, dtypes = {}, set()
    for key, shape in gpt2_tensors.tensor_table(hparams, info.n_inner, info.tied).items():
        name = gpt2_tensors.huggingface_name(key)
        stored = f"transformer.{name}" if prefixed and key[0] != "lm_head" else name
        if stored not in tensors:
            raise GPT2Error(f"{path} has no tensor {stored}: it does not match config.json")
        dtype, array = tensors[stored]
        if array.shape != shape:
            raise GPT2Error(f"{path}: {stored} has shape {list(array.shape)}, but config.json needs {list(shape)}")
        if dtype not in ("F32", "F16", "BF16", "F64"):
            raise GPT2Error(f"{path}: {stored} is {dtype}, not a floating-point tensor")
        arrays[key] = safetensors_file.to_float32(dtype, array)
        dtypes.add(dtype)
    params = gpt2_tensors.nest(arrays, hparams["n_layer"], info.layer_norm_epsilon)
    return params, dataclasses.replace(info, stored_dtypes=tuple(sorted(dtypes)))


def check_layer_count(n_layer: int, tensors: dict, path: str) -> None:
    """config.json's n_layer against the layers stored, before any list of n_layer things is built: a
    claim of 10^7 layers is refused at once, and one of fewer layers than stored is not a smaller model."""
    stored = {match[1] for name in tensors if (match := LAYER_NAME.match(name))}
    if n_layer != len(stored):
        raise GPT2Error(f"{os.path.join(os.path.dirname(path), 'config.json')}: n_layer is {n_layer}, but {path} "
                        f"holds {len(stored)} layers: they do not belong together")


# ---------------------------------------------------------------- the Hugging Face cache


def hub_cache_dirs() -> list[str]:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    candidates = [os.environ.get("HF_HUB_CACHE"),
                  os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None,
                  os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")]
    return list(dict.fromkeys(path for path in candidates if path))


def find_in_hub_cache(name: str) -> str:
    """The snapshot directory of a hub model such as 'openai-community/gpt2' or 'distilgpt2', offline.

    The cache holds models--<org>--<name>/snapshots/<revision>/, and refs/main names the revision
    that `main` pointed to when it was downloaded.
    """
    folder = "models--" + name.replace("/", "--")
    for cache in hub_cache_dirs():
        repo = os.path.join(cache, folder)
        try:
            with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as f:
                snapshot = os.path.join(repo, "snapshots", f.read().strip())
        except OSError:
            snapshots = os.path.join(repo, "snapshots")
            found = os.listdir(snapshots) if os.path.isdir(snapshots) else []
            snapshot = os.path.join(snapshots, found[0]) if len(found) == 1 else None
        if snapshot and os.path.isdir(snapshot):
            return snapshot
    raise GPT2Error(f"{name} is neither a directory nor in the Hugging Face cache (looked in "
                    f"{', '.join(hub_cache_dirs())}): get it with `huggingface-cli download {name}`, "
                    "or give --model a directory")
