"""HuggingFace transformers' GPT2LMHeadModel as the reference model, built from checkpoint arrays.

The state dict is filled from the arrays of an OpenAI-format checkpoint (transformers 5 has no
TensorFlow loader), and the model computes in float64 so that the float32 model under test is
compared with something more exact than itself. Needs torch==2.13.0 and transformers.
"""
import numpy as np


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


def hf_greedy(model, tokens, n_new, repetition_penalty=None):
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
            repetition_penalty=repetition_penalty,
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
