"""GPT-2 in plain NumPy, as small as it gets: read it top to bottom as a tutorial.

The same model as gpt2.py (which adds a key/value cache, sampling and a full command line);
a test makes sure both choose the same greedy tokens.  Usage:
    python gpt2_pico.py "Alan Turing theorized that computers would one day become" 40
"""
import math
import sys

import numpy as np


def gelu(x):  # GPT-2's GELU, the tanh approximation
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


def softmax(x):  # turn scores into probabilities along the last axis
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # give each row mean 0 and variance 1, then scale and shift
    mean, variance = np.mean(x, axis=-1, keepdims=True), np.var(x, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):  # [n_seq, n_in] -> [n_seq, n_out]
    return x @ w + b


def ffn(x, c_fc, c_proj):  # [n_seq, n_embd] -> [n_seq, 4*n_embd] -> [n_seq, n_embd]
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def attention(q, k, v, mask):  # [n_seq, head_dim] x3, [n_seq, n_seq] -> [n_seq, head_dim]
    return softmax(q @ k.T / math.sqrt(q.shape[-1]) + mask) @ v


def mha(x, c_attn, c_proj, n_head):  # [n_seq, n_embd] -> [n_seq, n_embd]
    q, k, v = np.split(linear(x, **c_attn), 3, axis=-1)  # [n_seq, 3*n_embd] -> 3 x [n_seq, n_embd]
    mask = np.triu(np.full((len(x), len(x)), -np.inf, dtype=x.dtype), k=1)  # a token sees only the past
    heads = zip(np.split(q, n_head, axis=-1), np.split(k, n_head, axis=-1), np.split(v, n_head, axis=-1))
    out = [attention(q_h, k_h, v_h, mask) for q_h, k_h, v_h in heads]  # n_head x [n_seq, head_dim]
    return linear(np.hstack(out), **c_proj)  # [n_seq, n_embd] -> [n_seq, n_embd]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head):  # [n_seq, n_embd] -> [n_seq, n_embd]
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head)
    return x + ffn(layer_norm(x, **ln_2), **mlp)


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, lm_head=None):  # [n_seq] -> [n_seq, n_vocab]
    x = wte[inputs] + wpe[range(len(inputs))]  # token + position embeddings: [n_seq] -> [n_seq, n_embd]
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head)
    head = wte if lm_head is None else lm_head  # GPT-2 reuses wte as its head; some fine-tunes have their own
    return layer_norm(x, **ln_f) @ head.T  # [n_seq, n_embd] -> [n_seq, n_vocab]


def generate(inputs, params, n_head, n_tokens_to_generate):  # greedy: always the most likely next token
    inputs = list(inputs)
    for _ in range(n_tokens_to_generate):
        logits = gpt2(inputs, **params, n_head=n_head)  # the whole sequence again at every step
        inputs.append(int(np.argmax(logits[-1])))
    return inputs[len(inputs) - n_tokens_to_generate :]


def main(prompt, n_tokens_to_generate=40, model_size="124M", models_dir="models"):
    from utils import load_encoder_hparams_and_params

    encoder, hparams, params = load_encoder_hparams_and_params(model_size, models_dir)
    inputs = encoder.encode(prompt) or [encoder.eot_token]  # an empty prompt starts a new document
    if len(inputs) + n_tokens_to_generate > hparams["n_ctx"]:
        sys.exit(f"error: the prompt plus {n_tokens_to_generate} tokens exceed {hparams['n_ctx']} tokens")
    return encoder.decode(generate(inputs, params, hparams["n_head"], n_tokens_to_generate))


if __name__ == "__main__":
    from utils import GPT2Error

    try:
        print(main(sys.argv[1], *[int(n) for n in sys.argv[2:3]], *sys.argv[3:5]))
    except (GPT2Error, IndexError, ValueError) as e:
        sys.exit(f"usage: gpt2_pico.py PROMPT [N_TOKENS] [MODEL_SIZE] [MODELS_DIR]  ({e})")
