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
# a text several times longer than the fixtures' contexts (32 and 64 tokens), for scoring
SCORE_TEXT = (
    "The tokenizer cuts a text into pieces, and the model reads the pieces one after another. At every "
    "position it guesses what comes next, and the guess is a probability for each of the 50,257 pieces it "
    "knows. Scoring a text asks how surprised the model is by what really came next: the negative "
    "logarithm of the probability it gave to the true piece, averaged over the text. Perplexity is the "
    "exponential of that average, so a perplexity of 20 means the model was, on average, as unsure as if it "
    "had to choose among 20 equally likely pieces. Texts longer than the context are read in windows that "
    "overlap, so that every piece is predicted with plenty of context before it. \u00c9t\u00e9, na\u00efve, "
    "\u65e5\u672c\u8a9e and \U0001F600 make sure the bytes of a character can be split across pieces."
)
SHORT_SCORE_TEXT = "A short text scores in a single window."


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


def hf_window_nll(model, tokens, n_ctx, stride):
    """Average negative log-likelihood of tokens[1:] with transformers, windowed as in HuggingFace's
    perplexity guide: windows of n_ctx tokens every `stride` tokens, each labelling (-100 elsewhere) the
    tokens no earlier window scored. Each window's mean loss is weighted by the number of tokens it
    really scored (the guide's weighting is off by one for every window after the first)."""
    import torch

    nll_sum, n_scored, scored_until = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + n_ctx, len(tokens))
        window = torch.tensor([tokens[begin:end]])
        labels = window.clone()
        labels[0, : scored_until - begin] = -100  # scored by an earlier window
        with torch.no_grad():
            loss = model(window, labels=labels).loss.item()
        count = int((labels[0, 1:] != -100).sum())  # the model shifts labels by one internally
        nll_sum += loss * count
        n_scored += count
        scored_until = end
        if end == len(tokens):
            break
    assert n_scored == len(tokens) - 1
    return nll_sum / n_scored


def hf_short_text_nll(model, tokens):
    """transformers' own loss of a text that fits one window: model(ids, labels=ids).loss."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens]), labels=torch.tensor([tokens])).loss.item()
