"""The independent references the tests compare against, and the stored reference they run without.

- HuggingFace transformers' GPT2LMHeadModel, its state dict filled from the checkpoint arrays
  (transformers 5 has no TensorFlow loader), computing in float64 so that the float32 model under
  test is compared with something more exact than itself.
- tests/fixtures/reference.npz, written by `python tests/make_reference.py` from the same model,
  so that the suite also checks the logits on machines without torch.
"""
import json
import os

import numpy as np

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REFERENCE_FILE = os.path.join(FIXTURES_DIR, "reference.npz")
FIXTURE_CONFIGS = ("tiny-a", "tiny-b")
N_COLUMNS = 1024  # vocabulary columns stored for every position (all 50,257 only at the last position)
CLI_PROMPT = "Alan Turing theorized that computers would one day become"
CLI_NEW_TOKENS = 16


def fixture_dir(name):
    return os.path.join(FIXTURES_DIR, name)


def read_hparams(model_dir):
    with open(os.path.join(model_dir, "hparams.json")) as f:
        return json.load(f)


def reference_tokens(n_vocab, n_ctx, seed=0):
    """A fixed sequence of n_ctx token ids spread over the whole vocabulary."""
    return np.random.default_rng(seed).integers(0, n_vocab, size=n_ctx).tolist()


def reference_columns(n_vocab, seed=1):
    """The vocabulary columns stored for every position: a fixed random subset, sorted, plus the last id."""
    columns = np.random.default_rng(seed).choice(n_vocab - 1, size=N_COLUMNS - 1, replace=False)
    return np.sort(np.append(columns, n_vocab - 1))


def hf_state_dict(arrays, n_layer):
    """Map checkpoint names (model/h0/attn/c_attn/w, ...) to GPT2LMHeadModel's state dict keys.

    HF's Conv1D keeps TensorFlow's [n_in, n_out] layout, so no weight is transposed; only the
    leading 1 of the conv1d weights is dropped.
    """
    import torch

    def tensor(name):
        array = np.asarray(arrays[name], dtype=np.float64)
        return torch.from_numpy(array[0] if name.endswith("/w") else array)

    state = {
        "transformer.wte.weight": tensor("model/wte"),
        "transformer.wpe.weight": tensor("model/wpe"),
        "transformer.ln_f.weight": tensor("model/ln_f/g"),
        "transformer.ln_f.bias": tensor("model/ln_f/b"),
        "lm_head.weight": tensor("model/wte"),  # tied head
    }
    for i in range(n_layer):
        for hf, ours in [("ln_1", "ln_1"), ("ln_2", "ln_2")]:
            state[f"transformer.h.{i}.{hf}.weight"] = tensor(f"model/h{i}/{ours}/g")
            state[f"transformer.h.{i}.{hf}.bias"] = tensor(f"model/h{i}/{ours}/b")
        for layer in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            key = layer.replace("/", ".")
            state[f"transformer.h.{i}.{key}.weight"] = tensor(f"model/h{i}/{layer}/w")
            state[f"transformer.h.{i}.{key}.bias"] = tensor(f"model/h{i}/{layer}/b")
    return state


def hf_model(hparams, arrays):
    """A float64 GPT2LMHeadModel in eval mode holding exactly the checkpoint's weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=hparams["n_vocab"],
        n_positions=hparams["n_ctx"],
        n_embd=hparams["n_embd"],
        n_layer=hparams["n_layer"],
        n_head=hparams["n_head"],
        activation_function="gelu_new",  # GPT-2's tanh approximation of GELU
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config).to(torch.float64).eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(arrays, hparams["n_layer"]), strict=False)
    # only non-persistent buffers (the causal mask in some versions) may stay as the model made them
    assert not unexpected and all(key.endswith("attn.bias") or key.endswith("masked_bias") for key in missing), (
        missing,
        unexpected,
    )
    return model


def hf_logits(model, tokens):  # [n_seq] -> [n_seq, n_vocab] float64
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def hf_greedy(model, tokens, n_new):
    """transformers' own greedy generate (with its KV cache): the new token ids."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([tokens]),
            attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
            max_new_tokens=n_new,
            min_new_tokens=n_new,  # do not stop at <|endoftext|>: compare the full length
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(tokens) :].tolist()
