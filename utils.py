"""picoGPT's entry point, load_encoder_hparams_and_params, and load_model for any GPT-2 directory:
they wire the parts together.

download.py fetches OpenAI's files, tf_checkpoint.py reads the tensor bundle and encoder.py the
vocabulary; what an OpenAI checkpoint must hold (its variables' names and shapes, from
hparams.json) and how they nest into picoGPT's params dict is decided here. Hugging Face's format
is hf_model.py's; both give the same (encoder, hparams, params).
"""
import json
import os
import re
from typing import Callable, NamedTuple, TypeVar

import numpy as np

import download
import encoder as encoder_module
import gpt2_tensors
import hf_model
import integrity
import tf_checkpoint
from encoder import Encoder, VocabularyError, get_encoder, get_hf_encoder
from errors import GPT2Error
from gpt2_tensors import ModelInfo

CHECKPOINT_PREFIX = "model.ckpt"
HPARAMS_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
T = TypeVar("T")
REDOWNLOAD = "delete it and run again to download it anew"  # what to do about a damaged model file


def load_encoder_hparams_and_params(
    model_size: str, models_dir: str = "models", base_url: str | None = None, verify: bool = False
) -> tuple[Encoder, dict, dict]:
    """picoGPT's entry point: download if needed, then return (encoder, hparams, params).

    Every tensor's CRC32C is checked on the first load of the files (see integrity.py); verify=True
    checks them again even if a pass is remembered."""
    model_dir = download.download_model_files(model_size, models_dir, base_url, check=check_new_download)

    def load() -> tuple[Encoder, dict, dict]:
        hparams = load_hparams(model_dir)
        params = load_params(model_dir, hparams, verify)
        return load_encoder(model_size, models_dir), hparams, params

    return moving_damaged_files_aside(model_dir, load)


class Model(NamedTuple):
    encoder: Encoder
    hparams: dict  # picoGPT's: n_vocab, n_ctx, n_embd, n_head, n_layer
    params: dict
    info: ModelInfo  # its format, the dtypes it was stored in, its layer norms' epsilon


def load_model(model: str, verify: bool = False) -> tuple[Encoder, dict, dict]:
    """(encoder, hparams, params) of a GPT-2 directory or hub name: open_model without the info."""
    return open_model(model, verify)[:3]


def open_model(model: str, verify: bool = False) -> Model:
    """A GPT-2 directory in OpenAI's format (the 7 files) or Hugging Face's (config.json,
    model.safetensors, tokenizer files), or a hub name such as 'openai-community/gpt2' found in the
    local Hugging Face cache. Nothing is downloaded."""
    model_dir = model if os.path.isdir(model) else hf_model.find_in_hub_cache(model)
    # the tensors before the tokenizer: a config that does not match them fails before that work
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        hparams, info = hf_model.load_config(model_dir)
        params, info = hf_model.load_params(model_dir, hparams, info)
        encoder = vocabulary_error_as_gpt2_error(get_hf_encoder, model_dir)
    elif os.path.isfile(os.path.join(model_dir, "hparams.json")):
        missing = download.missing_files(model_dir)
        if missing:
            raise GPT2Error(f"{model_dir} lacks {', '.join(missing)} of OpenAI's release: copy them there, or "
                            "use --model_size and --models_dir to download them")
        folder = os.path.abspath(model_dir)
        hparams = load_hparams(model_dir)
        params = load_params(model_dir, hparams, verify)
        encoder, info = load_encoder(os.path.basename(folder), os.path.dirname(folder)), ModelInfo(model_dir, "openai")
    else:
        raise GPT2Error(f"{model_dir} holds no GPT-2: expected OpenAI's files (hparams.json, model.ckpt.*, ...) "
                        "or Hugging Face's (config.json, model.safetensors, tokenizer files)")
    check_vocabulary_fits(encoder, hparams, model_dir)
    return Model(encoder, hparams, params, info)


def check_vocabulary_fits(encoder: Encoder, hparams: dict, model_dir: str) -> None:
    """Every id the tokenizer can produce must have an embedding row."""
    largest = max(max(encoder.decoder), max(encoder.added.values()))
    if largest >= hparams["n_vocab"]:
        raise GPT2Error(f"{model_dir}: the tokenizer has ids up to {largest}, but the model's vocabulary has "
                        f"{hparams['n_vocab']} rows: they do not belong together")


def load_encoder(model_size: str, models_dir: str) -> Encoder:
    return vocabulary_error_as_gpt2_error(get_encoder, model_size, models_dir)


def vocabulary_error_as_gpt2_error(load: object, *args: str) -> Encoder:
    try:
        return load(*args)
    except VocabularyError as e:
        raise GPT2Error(str(e)) from None


def load_hparams(model_dir: str) -> dict:
    """hparams.json, checked: the five sizes every other check relies on."""
    path = os.path.join(model_dir, "hparams.json")
    try:
        with open(path, encoding="utf-8") as f:
            hparams = json.load(f)
    except OSError as e:
        raise GPT2Error(f"cannot read {path}: {e.strerror}; {REDOWNLOAD}") from None
    except ValueError as e:
        raise GPT2Error(f"{path} is not valid JSON ({e}); {REDOWNLOAD}") from None
    except RecursionError:
        raise GPT2Error(f"{path} is not hparams: its JSON is nested too deeply; {REDOWNLOAD}") from None
    if not isinstance(hparams, dict) or not all(is_positive_int(hparams.get(key)) for key in HPARAMS_KEYS):
        raise GPT2Error(f"{path} must give positive integers for {', '.join(HPARAMS_KEYS)}; {REDOWNLOAD}")
    if hparams["n_embd"] % hparams["n_head"]:
        raise GPT2Error(f"{path}: n_embd must be a multiple of n_head; {REDOWNLOAD}")
    return hparams


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def checkpoint_shapes(hparams: dict) -> dict[str, tuple[int, ...]]:
    """The variables of openai/gpt-2's model.py and their shapes, from hparams.json (gpt2_tensors' table)."""
    return {gpt2_tensors.openai_name(path): gpt2_tensors.openai_shape(path, shape)
            for path, shape in gpt2_tensors.tensor_table(hparams).items()}


def map_checkpoint_tensors(model_dir: str, hparams: dict, verify: bool = False) -> dict[str, np.ndarray]:
    """{variable name: read-only float32 view into the memory-mapped data file}, checked against hparams
    and, on the first load of these files or when verify is set, against the index's CRC32C checksums."""
    prefix = os.path.join(model_dir, CHECKPOINT_PREFIX)
    index_path = prefix + tf_checkpoint.INDEX_SUFFIX
    try:
        entries = tf_checkpoint.read_index(prefix)
        check_layer_count(hparams["n_layer"], entries, r"model/h(\d+)/", os.path.join(model_dir, "hparams.json"),
                          index_path)
        data = tf_checkpoint.map_data(prefix)
        tensors = {}
        for name, shape in checkpoint_shapes(hparams).items():
            if name not in entries:
                raise GPT2Error(f"{index_path} has no variable {name}: it does not match hparams.json")
            entry = entries[name]
            if entry.dtype != tf_checkpoint.DT_FLOAT or entry.shape != shape:
                raise GPT2Error(f"{index_path}: {name} is dtype {entry.dtype} shape {list(entry.shape)}, "
                                f"but hparams.json needs float32 {list(shape)}")
            tensors[name] = tf_checkpoint.tensor_view(data, entry, name, prefix)
    except GPT2Error as e:
        raise GPT2Error(f"{e}; {REDOWNLOAD}") from None
    integrity.verify_checkpoint(prefix, entries, data, force=verify)  # its errors say what to do
    return tensors


def check_layer_count(n_layer: int, names: object, pattern: str, config_name: str, path: str) -> None:
    """The layers the config claims must be the layers the checkpoint holds, compared before the list of
    expected tensors is built: a claim of 10^7 layers would otherwise cost seconds and gigabytes, and
    a claim of fewer layers would silently drop the checkpoint's last ones."""
    stored = {int(match[1]) for name in names if (match := re.match(pattern, name))}
    if n_layer != len(stored):
        raise GPT2Error(f"{config_name}: n_layer is {n_layer}, but {path} holds {len(stored)} layers: "
                        "they do not belong together")


def params_from_tensors(tensors: dict[str, np.ndarray], hparams: dict) -> dict:
    """picoGPT's params dict from the checkpoint's variables; conv1d weights lose their leading 1."""
    arrays = {path: tensors[gpt2_tensors.openai_name(path)] for path in gpt2_tensors.tensor_table(hparams)}
    arrays = {path: array[0] if path[-1] == "w" else array for path, array in arrays.items()}  # [1, n_in, n_out]
    return gpt2_tensors.nest(arrays, hparams["n_layer"])


def check_new_download(model_dir: str) -> None:
    """Every tensor against its CRC32C right after a download (download.py runs it under its lock),
    unless only other files were fetched: a pass of these very checkpoint files is remembered."""
    moving_damaged_files_aside(model_dir, lambda: map_checkpoint_tensors(model_dir, load_hparams(model_dir)))


def moving_damaged_files_aside(model_dir: str, load: Callable[[], T]) -> T:
    """load(), but when it fails, every downloaded file that fails its own check is moved aside (renamed,
    never deleted), so the next run downloads it anew. A web page sent with status 200 in place of the
    files would otherwise stop every run at the first of them until the user deleted them all by hand."""
    try:
        return load()
    except GPT2Error:
        damaged = damaged_files(model_dir)
        if not damaged:
            raise
    for name in damaged:
        if os.path.isfile(os.path.join(model_dir, name)):  # else another run has moved it already
            integrity.move_aside(os.path.join(model_dir, name))
    raise GPT2Error(f"{model_dir}: {', '.join(damaged)} failed their checks, so are not what OpenAI's release "
                    "holds (a web page sent in place of a file?); moved each to <name>.damaged, run again to "
                    "download anew")


def damaged_files(model_dir: str) -> list[str]:
    """The model files that fail a check of their own: hparams.json, encoder.json, vocab.bpe and the
    checkpoint index parse, and the data file is as long as the index says (when the index is sound)."""
    prefix = os.path.join(model_dir, CHECKPOINT_PREFIX)
    index = CHECKPOINT_PREFIX + tf_checkpoint.INDEX_SUFFIX

    def read_vocabulary(name: str, parse: Callable[[str, str], object]) -> Callable[[], object]:
        path = os.path.join(model_dir, name)
        return lambda: parse(path, encoder_module.read_vocabulary_file(path))

    checks = {"hparams.json": lambda: load_hparams(model_dir),
              "encoder.json": read_vocabulary("encoder.json", encoder_module.parse_encoder_json),
              "vocab.bpe": read_vocabulary("vocab.bpe", encoder_module.parse_vocab_bpe),
              index: lambda: tf_checkpoint.read_index(prefix)}
    damaged = [name for name, check in checks.items() if os.path.isfile(os.path.join(model_dir, name)) and fails(check)]
    data = os.path.join(model_dir, CHECKPOINT_PREFIX + tf_checkpoint.DATA_SUFFIX)
    if index not in damaged and os.path.isfile(data) and os.path.isfile(prefix + tf_checkpoint.INDEX_SUFFIX):
        entries = tf_checkpoint.read_index(prefix).values()
        if os.path.getsize(data) != max((entry.offset + entry.size for entry in entries), default=0):
            damaged.append(os.path.basename(data))
    return damaged


def fails(check: Callable[[], object]) -> bool:
    try:
        check()
    except (GPT2Error, VocabularyError):
        return True
    return False


def load_params(model_dir: str, hparams: dict, verify: bool = False) -> dict:
    return params_from_tensors(map_checkpoint_tensors(model_dir, hparams, verify), hparams)
