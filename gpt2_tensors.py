"""GPT-2's tensors, written down once for every checkpoint format: where each sits in picoGPT's
params dict, its shape from the hyperparameters, and the name and stored shape each format gives it.

utils.py (OpenAI's TensorFlow checkpoints) and hf_model.py (Hugging Face's safetensors) read their
files; this table says what must be in them, and ModelInfo says what the loader found besides the
weights. Like nanoGPT's from_pretrained: a foreign format is a naming of the one table, plus a
shape check per tensor, so a layout mistake fails loudly and names the tensor.
"""
import dataclasses

import numpy as np

Path = tuple  # a tensor's place in params: ("wte",) or ("blocks", 3, "attn", "c_attn", "w")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the loader found besides the weights; the hyperparameters stay in hparams."""
    path: str  # the model's directory
    format: str  # "openai" (TensorFlow checkpoint) or "huggingface" (safetensors)
    stored_dtypes: tuple[str, ...] = ("F32",)  # as stored; the weights in memory are float32
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None  # the MLP's width when it is not 4 * n_embd
    tied: bool = True  # the output head is the token embeddings

    @property
    def converted(self) -> bool:
        return self.stored_dtypes != ("F32",)


def tensor_table(hparams: dict, n_inner: int | None = None, tied: bool = True) -> dict[Path, tuple[int, ...]]:
    """Every tensor of a GPT-2 with these hyperparameters and its shape, in picoGPT's layout (a linear's
    w is [n_in, n_out], as TensorFlow's conv1d and transformers' Conv1D both keep it)."""
    n_vocab, n_ctx, n_embd = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    n_inner = n_inner or 4 * n_embd
    table = {("wte",): (n_vocab, n_embd), ("wpe",): (n_ctx, n_embd)}
    for i in range(hparams["n_layer"]):
        for group, name, n_in, n_out in [("attn", "c_attn", n_embd, 3 * n_embd), ("attn", "c_proj", n_embd, n_embd),
                                         ("mlp", "c_fc", n_embd, n_inner), ("mlp", "c_proj", n_inner, n_embd)]:
            table[("blocks", i, group, name, "w")] = (n_in, n_out)
            table[("blocks", i, group, name, "b")] = (n_out,)
        for norm in ("ln_1", "ln_2"):
            table[("blocks", i, norm, "g")] = table[("blocks", i, norm, "b")] = (n_embd,)
    table[("ln_f", "g")] = table[("ln_f", "b")] = (n_embd,)
    if not tied:
        table[("lm_head",)] = (n_vocab, n_embd)
    return table


def openai_name(path: Path) -> str:
    """openai/gpt-2's variable name: model/h3/attn/c_attn/w."""
    parts = [f"h{path[1]}", *path[2:]] if path[0] == "blocks" else list(path)
    return "/".join(["model", *parts])


def openai_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape) if path[-1] == "w" else shape  # conv1d weights keep a leading 1


HF_LEAF = {"w": "weight", "g": "weight", "b": "bias"}


def huggingface_name(path: Path) -> str:
    """transformers' GPT2Model name, without the `transformer.` prefix: h.3.attn.c_attn.weight."""
    if path[0] in ("wte", "wpe", "lm_head"):
        return f"{path[0]}.weight"
    parts = [f"h.{path[1]}", *path[2:-1]] if path[0] == "blocks" else [path[0]]
    return ".".join([*parts, HF_LEAF[path[-1]]])


def nest(arrays: dict[Path, np.ndarray], n_layer: int, layer_norm_epsilon: float = 1e-5) -> dict:
    """picoGPT's params dict: {"wte", "wpe", "blocks": [{"attn": {"c_attn": {"w", "b"}}, ...}], "ln_f"}.

    A layer norm whose epsilon is not GPT-2's 1e-5 carries it in its dict, as transformers' LayerNorm
    module holds its own eps, so that gpt2.layer_norm(x, **ln_1) needs no other argument."""
    params: dict = {"blocks": [{} for _ in range(n_layer)]}
    for path, array in arrays.items():
        node, keys = (params["blocks"][path[1]], path[2:]) if path[0] == "blocks" else (params, path)
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = array
    if layer_norm_epsilon != 1e-5:
        for norm in [params["ln_f"], *(block[name] for block in params["blocks"] for name in ("ln_1", "ln_2"))]:
            norm["eps"] = layer_norm_epsilon
    return params
