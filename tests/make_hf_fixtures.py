"""Write the Hugging Face format test models (tests/fixtures/hf-*) with transformers' own save_pretrained,
and their reference outputs (tests/fixtures/hf_reference.npz).

    python tests/make_hf_fixtures.py     # needs torch==2.13.0 and transformers

Each model has GPT-2's real tokenizer (the files of the tiny-a fixture) and random weights with
the scales of references/openai_checkpoint.py, so that greedy continuations vary:
- hf-a: 2 layers, n_embd 8, n_head 2, an untied lm_head; tokenizer as vocab.json + merges.txt;
- hf-b: 3 layers, n_embd 12, n_head 3, layer_norm_epsilon 1e-6, two added tokens (vocabulary
  50,259), saved as a bare GPT2Model (tensor names without `transformer.`, no lm_head); tokenizer.json;
- hf-c: 2 layers, n_embd 8, n_head 4, stored in float16; tokenizer.json.
The reference (float64 transformers, weights as stored) holds, per model: the logits of a fixed
n_ctx-token sequence at 1,024 columns for every position and in full at the last, and transformers'
greedy continuation of reference.CLI_PROMPT and its token ids for the added-token texts.
"""
import json
import os
import sys

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS_DIR))
sys.path.insert(0, TESTS_DIR)

import reference  # noqa: E402
from references.openai_checkpoint import random_weights  # noqa: E402

N_VOCAB = 50257
CONFIGS = {
    "hf-a": dict(n_layer=2, n_embd=8, n_head=2, n_positions=32, layer_norm_epsilon=1e-5, tie=False,
                 added=[], dtype="float32", bare=False, tokenizer="vocab.json"),
    "hf-b": dict(n_layer=3, n_embd=12, n_head=3, n_positions=48, layer_norm_epsilon=1e-6, tie=True,
                 added=["<|user|>", "<|bot|>"], dtype="float32", bare=True, tokenizer="tokenizer.json"),
    "hf-c": dict(n_layer=2, n_embd=8, n_head=4, n_positions=24, layer_norm_epsilon=1e-5, tie=True,
                 added=[], dtype="float16", bare=False, tokenizer="tokenizer.json"),
}
SEEDS = {"hf-a": 31, "hf-b": 32, "hf-c": 33}
ADDED_TOKEN_TEXTS = ["<|user|>", "Hi<|user|>there <|bot|> ok<|endoftext|>", "<|bot|><|user|><|bot|>",
                     " <|user|> spaced <|bot|>\n", "<|user|", "<|user|><|endoftext|>é"]


def gpt2_files():
    folder = reference.fixture_dir("tiny-a")
    with open(os.path.join(folder, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(folder, "vocab.bpe"), encoding="utf-8") as f:
        merges_text = f.read()
    return vocab, merges_text


def build_model(name):
    """A float32 GPT2LMHeadModel with this fixture's configuration and seeded random weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    c = CONFIGS[name]
    n_vocab = N_VOCAB + len(c["added"])
    config = GPT2Config(vocab_size=n_vocab, n_positions=c["n_positions"], n_embd=c["n_embd"], n_layer=c["n_layer"],
                        n_head=c["n_head"], layer_norm_epsilon=c["layer_norm_epsilon"], tie_word_embeddings=c["tie"],
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hparams = dict(n_vocab=n_vocab, n_ctx=c["n_positions"], n_embd=c["n_embd"], n_head=c["n_head"],
                   n_layer=c["n_layer"])
    arrays = random_weights(hparams, SEEDS[name])
    state = reference.hf_state_dict(arrays, c["n_layer"])
    if not c["tie"]:
        rng = np.random.default_rng(SEEDS[name] + 100)
        state["lm_head.weight"] = torch.from_numpy(rng.standard_normal((n_vocab, c["n_embd"])) * 0.2)
    model = GPT2LMHeadModel(config).eval()
    model.load_state_dict(state, strict=False)
    return model


def save_tokenizer(name, folder):
    from transformers import GPT2Tokenizer

    c = CONFIGS[name]
    vocab, merges_text = gpt2_files()
    merges = [tuple(line.split(" ")) for line in merges_text.split("\n")[1:] if line]
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    if c["added"]:
        tokenizer.add_tokens(c["added"])
    tokenizer.save_pretrained(folder)
    if c["tokenizer"] == "vocab.json":  # the older layout: vocab.json and merges.txt, as the hub's gpt2 has
        os.remove(os.path.join(folder, "tokenizer.json"))
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write(merges_text)


def write_fixture(name):
    import torch

    folder = reference.fixture_dir(name)
    model = build_model(name)
    saved = model.transformer if CONFIGS[name]["bare"] else model
    if CONFIGS[name]["dtype"] == "float16":
        saved = saved.to(torch.float16)
    saved.save_pretrained(folder)  # safetensors, transformers' default
    save_tokenizer(name, folder)


def reference_outputs(name):
    """What transformers computes on the saved fixture, in float64."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder = reference.fixture_dir(name)
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).to(torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    n_vocab, n_ctx = model.config.vocab_size, model.config.n_positions
    tokens = reference.reference_tokens(n_vocab, n_ctx)
    columns = reference.reference_columns(n_vocab)
    logits = reference.hf_logits(model, tokens)
    prompt = tokenizer(reference.CLI_PROMPT)["input_ids"]
    out = {
        f"{name}/tokens": np.array(tokens),
        f"{name}/columns": columns,
        f"{name}/logits_columns": logits[:, columns].astype(np.float32),
        f"{name}/logits_last": logits[-1].astype(np.float32),
        f"{name}/cli_prompt": np.array(prompt),
        f"{name}/cli_tokens": np.array(reference.hf_greedy(model, prompt, n_ctx - len(prompt))),
    }
    for i, text in enumerate(ADDED_TOKEN_TEXTS):
        out[f"{name}/added_text_ids_{i}"] = np.array(tokenizer(text)["input_ids"])
    return out


def main():
    out = {}
    for name in CONFIGS:
        write_fixture(name)
        out.update(reference_outputs(name))
        print(f"wrote {reference.fixture_dir(name)}: greedy {out[f'{name}/cli_tokens'].tolist()[:12]}")
    path = os.path.join(reference.FIXTURES_DIR, "hf_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
