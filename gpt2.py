"""GPT-2 in plain NumPy: the model, fast generation with a key/value cache, sampling and scoring.

Read top-down: small building blocks, attention and the transformer block, the model, then
generation, sampling and scoring. gpt2_pico.py is the same model without the cache or the batch
axis, as a tutorial: read it first. This file is a library; `python gpt2.py PROMPT ...` hands over
to the command line in cli.py.

Everything is float32. The model takes the new tokens of one or more sequences as one list of
rows, [N] (a Batch says which rows belong to which sequence), so that several requests share each
matrix product while each attends over its own keys and values; one prompt is a batch of one. A
shape comment follows each line that changes a shape. Where a def line would run long, axes get
short names: N = the new tokens of all sequences, T = one sequence's new tokens, H = n_head,
D = head_dim = n_embd / n_head, E = n_embd, K = n_kv (one sequence's keys so far: cached and new).
"""
import math

import numpy as np

from errors import ContextError

SCORE_FLOOR = np.float32(-80)  # below the row's largest score; exp(-80) = 1.8e-35 is still a normal float32
GELU_ROWS = 64  # rows per block in gelu: 64 x 3072 floats (768 KB) stay in cache through its passes
QUERY_BLOCK = 64  # queries per block in causal_attention: a block computes at most 63 scores per query it need not


def gelu(x):
    """GELU as GPT-2 computes it, the tanh approximation ("gelu_new" in HuggingFace transformers):
    0.5 * x * (1 + tanh(u)) with u = sqrt(2 / pi) * (x + 0.044715 * x**3), as gpt2_pico.py writes it.

    Here it is computed as x / (1 + exp(-2 * u)), the same function (0.5 * (1 + tanh(u)) is the
    logistic sigmoid of 2u), because NumPy's float32 exp is about twice as fast as its tanh; and
    GELU_ROWS rows at a time, each block updated in place, since GELU runs on the widest
    activations (4 * n_embd per token) and its 8 passes are faster on rows that stay in the CPU's
    cache between them.
    """
    out = np.empty_like(x)
    rows, out_rows = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])  # [..., n] -> [rows, n]
    for begin in range(0, len(rows), GELU_ROWS):
        gelu_into(rows[begin : begin + GELU_ROWS], out_rows[begin : begin + GELU_ROWS])
    return out


def gelu_into(x, y):
    """y = gelu(x), with -2u computed as x * (c + c * 0.044715 * x * x), c = -2 sqrt(2 / pi): one pass
    fewer than from x**3, which NumPy computes with a slow generic float32 pow anyway."""
    c = -2 * math.sqrt(2 / math.pi)  # math.sqrt keeps a Python float: np.sqrt's float64 would promote y
    np.multiply(x, x, out=y)
    y *= c * 0.044715
    y += c
    y *= x  # -2u
    # exp overflows past 88.7 (with a warning): at -2u = 80, x is about -9.7 and GELU -2e-34; at -80
    # exp gives 1.8e-35 and 1 + that is 1, where below -87 it would give slow subnormals. So the clamp
    # changes nothing that matters, and keeps x / y a finite, normal float32. The clip method, not np.clip
    # (whose Python wrapper costs a decoding step's row 3 us), with float32 bounds: np.minimum with a
    # scalar takes a path twice as slow.
    y.clip(np.float32(-80), np.float32(80), out=y)
    np.exp(y, out=y)
    y += 1
    np.divide(x, y, out=y)


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))  # subtract the max so exp cannot overflow
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # [..., n_embd] -> [..., n_embd]
    # np.add.reduce, not np.sum or np.mean: their Python-level wrappers dominate on a decoding step's one
    # row; and two buffers updated in place, not five fresh arrays
    inverse_n = 1 / x.shape[-1]
    centered = x - np.add.reduce(x, axis=-1, keepdims=True) * inverse_n
    scale = centered * centered
    variance = np.add.reduce(scale, axis=-1, keepdims=True) * inverse_n  # np.var would center x again
    np.divide(g, np.sqrt(variance + eps), out=scale)  # g / sqrt(variance + eps), in the squares' buffer
    centered *= scale
    centered += b
    return centered


def linear(x, w, b):  # [..., n_in] -> [..., n_out]
    y = x.reshape(-1, w.shape[0]) @ w  # one 2-D product for all rows: on 3-D input NumPy would loop over them
    y += b  # in place: filling a second fresh array costs about as much as a small product
    return y.reshape(*x.shape[:-1], w.shape[1])


def ffn(x, c_fc, c_proj):  # [N, E] -> [N, E]
    return linear(gelu(linear(x, **c_fc)), **c_proj)  # [.., n_embd] -> [.., 4*n_embd] -> [.., n_embd]


def exp_scores(q, keys, mask):  # [H, T, D], [H, D, K], [T, K] or None -> [H, T, K], [H, T, 1]
    """exp(q k^T / sqrt(D) + mask - the row's max) for every head at once, and each row's sum: the
    attention weights before they are divided by that sum."""
    q = q * (1 / math.sqrt(q.shape[-1]))  # scale the queries (fewer numbers than the scores)
    scores = q @ keys  # [H, T, D] @ [H, D, K] -> [H, T, K]
    if mask is not None:  # None: one new token, which may see every key
        scores += mask
    # in place: scores is ours, and n_head * n_seq * n_kv floats are worth not copying 4 times
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)  # np.max minus its Python wrapper
    # Clamp visible scores at -80 (masked ones stay -inf, so exactly 0 after exp): exp(-80) / 1024 keys
    # is still a normal float32, and subnormal weights make exp, and on some CPUs the product, far slower.
    # Clamping beat flushing tiny weights to 0 after the softmax, and changes no logit (issue 21).
    np.maximum(scores, SCORE_FLOOR if mask is None else mask + SCORE_FLOOR, out=scores)
    np.exp(scores, out=scores)
    return scores, np.add.reduce(scores, axis=-1, keepdims=True)


def attention_weights(q, keys, mask):  # [H, T, D], [H, D, K], [T, K] or None -> [H, T, K]
    """softmax(q k^T / sqrt(D) + mask) for every head at once: how much each query looks at each key."""
    weights, totals = exp_scores(q, keys, mask)
    weights /= totals
    return weights


def attend_block(q, keys, values, mask, weights_out=None):  # [H, T, D], [H, D, K], [H, K, D], [T, K] -> [H, T, D]
    """attention_weights(q, keys, mask) @ values, dividing by each row's sum on the [H, T, D] result
    rather than on the K times larger weights. weights_out, if given, gets the weights ([H, T, K])."""
    weights, totals = exp_scores(q, keys, mask)  # [H, T, K], [H, T, 1]
    if weights_out is not None:
        np.divide(weights, totals, out=weights_out)
    out = weights @ values  # [H, T, K] @ [H, K, D] -> [H, T, D]
    out /= totals
    return out


def causal_attention(q, keys, values, mask, trace=None):  # [H, T, D], [H, D, K], [H, K, D], [T, K] or None -> [H, T, D]
    """attention_weights(q, keys, mask) @ values, QUERY_BLOCK queries at a time: the keys after a
    block's last query are masked for all of its queries, so the block leaves them out. Over a long
    prompt that skips nearly half the scores, and their exp, the costliest step of the softmax.
    A trace is shown the whole [H, T, K] weights, masked ones 0, as if computed at once."""
    n_new, n_kv = q.shape[1], keys.shape[-1]
    recorded = None if trace is None else np.zeros((len(q), n_new, n_kv), dtype=np.float32)  # [H, T, K]
    if n_new <= QUERY_BLOCK:  # a decoding step's one query (mask None) or a short chunk: one block
        out = attend_block(q, keys, values, mask, recorded)
    else:
        out = np.empty(q.shape, dtype=np.float32)
        for begin in range(0, n_new, QUERY_BLOCK):
            end = min(begin + QUERY_BLOCK, n_new)
            seen = n_kv - n_new + end  # the block's last query sees keys 0 .. seen - 1
            weights_out = None if recorded is None else recorded[:, begin:end, :seen]
            out[:, begin:end] = attend_block(q[:, begin:end], keys[..., :seen], values[:, :seen],
                                             mask[begin:end, :seen], weights_out)
    if trace is not None:  # explain.py looks at the attention weights the model really used
        trace.attention(recorded)
    return out


def causal_mask(n_seq, start):  # -> [n_seq, start + n_seq]
    """0 where a query may look, -inf where it may not: the query at position start + i sees keys 0 .. start + i."""
    visible = np.arange(start + n_seq) <= np.arange(start, start + n_seq)[:, None]
    return np.where(visible, np.float32(0), np.float32(-np.inf))


def mha(x, c_attn, c_proj, n_head, attend, rows=None):  # [N, E] -> [N, E] (rows given: [R, E])
    qkv = linear(x, **c_attn)  # [N, E] -> [N, 3*E]
    q, k, v = qkv.reshape(len(x), 3, n_head, -1).transpose(1, 2, 0, 3)  # -> 3 x [H, N, D]
    out = attend(q, k, v)  # each sequence's queries against its own keys, all heads at once: [H, N, D]
    if rows is not None:  # only these rows go on; every row's keys and values are stored by now
        out = out[:, rows]  # [H, N, D] -> [H, R, D]
    return linear(out.transpose(1, 0, 2).reshape(out.shape[1], -1), **c_proj)  # [H, R, D] -> [R, E] -> [R, E]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, attend, rows=None):  # [N, E] -> [N, E] (rows: [R, E])
    # pre-norm: each half reads a layer-normed x and adds its output to x, the residual stream
    x = (x if rows is None else x[rows]) + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, attend=attend, rows=rows)
    x += ffn(layer_norm(x, **ln_2), **mlp)  # in place: this x is the new array made just above
    return x


def transformer(inputs, wte, wpe, blocks, ln_f, n_head, batch=None, lm_head=None):  # [N] -> [N, E] or [R, E]
    """The hidden states after the final layer norm of the new tokens of one or more sequences.

    inputs holds every sequence's new tokens one after another; batch (a Batch) says which belong
    to which sequence, at which positions, where their keys and values are kept, and which rows the
    caller wants (batch.outputs; all if None). Without a batch, inputs is one whole sequence and
    nothing is kept. (lm_head, an untied output head, is the callers' business: see head.)
    """
    batch = Batch([len(inputs)]) if batch is None else batch
    x = wte[np.asarray(inputs)] + wpe[batch.positions]  # [N] -> [N, E]
    for layer, block in enumerate(blocks):
        # The last block's keys and values are the last that anything reads, so from its attention on
        # only the wanted rows go on: a prompt pass that wants one row skips 3/4 of that block's products.
        rows = batch.outputs if layer == len(blocks) - 1 else None
        x = transformer_block(x, **block, n_head=n_head, attend=batch.attend_function(layer), rows=rows)
        if batch.trace is not None:  # explain.py looks at the residual stream after each block
            batch.trace.residual(x)
    return layer_norm(x, **ln_f)


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, lm_head=None):  # [n_seq] -> [n_seq, n_vocab]
    """picoGPT's API: the logits of every position of one sequence."""
    x = transformer(inputs, wte, wpe, blocks, ln_f, n_head)  # [n_seq] -> [n_seq, n_embd]
    return x @ head(wte, lm_head).T  # [n_seq, n_embd] -> [n_seq, n_vocab]


def head(wte, lm_head=None, **_):  # -> [n_vocab, n_embd]
    """The output head: GPT-2's reuses the token embeddings (tied); some fine-tunes have their own."""
    return wte if lm_head is None else lm_head


# ---------------------------------------------------------------- the key/value cache


class KVCache:
    """One sequence's keys and values in every layer: room for `capacity` positions, the first
    `length` of them filled. Keys are kept transposed, [head_dim, n_kv] for each head, so that
    q @ keys is a plain matrix product: NumPy's batched product on a transposed view is several
    times slower.

    np.empty reserves address space only: pages count in memory once generation writes them.
    """

    def __init__(self, params, n_head, capacity):
        n_layer, n_embd = len(params["blocks"]), params["wpe"].shape[1]
        self.keys = np.empty((n_layer, n_head, n_embd // n_head, capacity), dtype=np.float32)
        self.values = np.empty((n_layer, n_head, capacity, n_embd // n_head), dtype=np.float32)
        self.length = 0

    def claim(self, n_new):
        """The position of the first of n_new tokens about to be stored (the cache grows if it must)."""
        start, self.length = self.length, self.length + n_new
        if self.length > self.keys.shape[-1]:
            keys, values = self.keys, self.values
            capacity = max(self.length, 2 * keys.shape[-1])
            self.keys = np.empty((*keys.shape[:-1], capacity), dtype=np.float32)
            self.values = np.empty((*values.shape[:2], capacity, values.shape[-1]), dtype=np.float32)
            self.keys[..., :start], self.values[..., :start, :] = keys[..., :start], values[..., :start, :]
        return start

    def remember(self, layer, start, k, v):  # [H, T, D] x2 -> [H, D, K], [H, K, D]; K = start + T
        """Store new keys and values at positions start .. start + T - 1; return all of them so far."""
        end = start + k.shape[1]
        keys, values = self.keys[layer], self.values[layer]
        keys[..., start:end] = k.swapaxes(-1, -2)
        values[:, start:end] = v
        return keys[..., :end], values[:, :end]


class Batch:
    """The sequences of one forward pass: how many new tokens each has (they follow one another in
    the pass's rows), and each one's KVCache (None: attend over this pass's own tokens only), and
    which rows' hidden states the caller wants (outputs: their indices; None: all). Building a
    Batch claims the new tokens' positions in the caches. A trace, if given, is shown
    each layer's attention weights and the residual stream after each block (explain.py)."""

    def __init__(self, lengths, caches=None, trace=None, outputs=None):
        self.caches = caches or [None] * len(lengths)
        if outputs is not None and len(outputs) == sum(lengths):  # every row (as in a decoding step): no copies
            outputs = None
        self.outputs = None if outputs is None else np.asarray(outputs)  # the rows the caller wants, in order
        self.starts = [0 if cache is None else cache.claim(n) for cache, n in zip(self.caches, lengths)]
        self.ends = np.cumsum(lengths).tolist()  # where each sequence's rows end
        self.positions = np.concatenate([np.arange(start, start + n) for start, n in zip(self.starts, lengths)])
        self.masks = [causal_mask(n, start) if n > 1 else None for start, n in zip(self.starts, lengths)]
        self.trace = trace

    def attend_function(self, layer):
        return lambda q, k, v: self.attend(layer, q, k, v)

    def attend(self, layer, q, k, v):  # [H, N, D] x3 -> [H, N, D]
        """Each sequence's new queries against its own keys and values (stored first, if it has a cache)."""
        out = None if len(self.ends) == 1 else np.empty(q.shape, dtype=np.float32)
        begin = 0
        for end, start, cache, mask in zip(self.ends, self.starts, self.caches, self.masks):
            if cache is None:
                keys, values = np.ascontiguousarray(k[:, begin:end].swapaxes(-1, -2)), v[:, begin:end]
            else:
                keys, values = cache.remember(layer, start, k[:, begin:end], v[:, begin:end])
            attended = causal_attention(q[:, begin:end], keys, values, mask, self.trace)  # [H, T, D]
            if out is None:
                return attended
            out[:, begin:end] = attended
            begin = end
        return out


# ---------------------------------------------------------------- generation


def check_context(n_prompt, n_ctx):
    if n_prompt < 1:
        raise ContextError("a prompt is empty: start from [encoder.eot_token] for an unconditional sample")
    if n_prompt > n_ctx:
        raise ContextError(f"the prompt has {n_prompt} tokens, more than the model's context of {n_ctx} tokens: "
                           "shorten it (it is never cut silently)")


def generate_steps(inputs, params, n_head, n_tokens_to_generate, pick=np.argmax, keep=None, on_shift=None):
    """Yield (token, logits [n_vocab]) for each new token of one prompt.

    One pass over the prompt, then one token per step: the key/value cache lets each step run the
    blocks on the new token only, and the head (the largest matrix) runs on the last position only.
    pick(logits) chooses the token (default: greedy).

    Past the context window: once the window holds n_ctx tokens, it keeps its last `keep` tokens
    (default n_ctx // 2) and goes on as if they were a new prompt: GPT-2's positions are absolute,
    so their keys and values are computed anew, at positions 0 .. keep - 1. on_shift([0], step),
    if given, is told at which step. (engine.py does the same for many requests at once.)
    """
    n_ctx = params["wpe"].shape[0]
    check_context(len(inputs), n_ctx)
    keep = keep or n_ctx // 2
    cache = KVCache(params, n_head, min(n_ctx, len(inputs) + n_tokens_to_generate))
    head_t = head(**params).T  # [n_embd, n_vocab], a view
    window = pending = list(inputs)  # the tokens the model sees; those not yet in the cache
    for step in range(n_tokens_to_generate):
        batch = Batch([len(pending)], [cache], outputs=[len(pending) - 1])  # only the last row is needed
        x = transformer(pending, **params, n_head=n_head, batch=batch)  # [T] -> [1, n_embd]
        logits = x[-1] @ head_t  # [n_embd] -> [n_vocab]
        token = int(pick(logits))
        yield token, logits
        window, pending = window + [token], [token]
        if cache.length == n_ctx and step + 1 < n_tokens_to_generate:  # the next position would be n_ctx:
            window = pending = window[-keep:]  # go on from the last `keep` tokens
            cache.length = 0
            if on_shift is not None:
                on_shift([0], step)


def generate(inputs, params, n_head, n_tokens_to_generate, pick=np.argmax, keep=None):
    """picoGPT's API: the list of new token ids (greedy unless pick says otherwise)."""
    return [token for token, _ in generate_steps(inputs, params, n_head, n_tokens_to_generate, pick, keep)]


# ---------------------------------------------------------------- scoring


def log_sum_exp(logits):  # [rows, n_vocab] -> [rows]
    """log(sum(exp(logits))) of each row, after its largest logit is taken out so that exp cannot
    overflow; at SCORE_FLOOR below it exp stays out of the slow subnormal range, and 50,257 such
    terms are far below the total's round-off."""
    peak = np.maximum.reduce(logits, axis=-1, keepdims=True)
    shifted = logits - peak
    np.maximum(shifted, SCORE_FLOOR, out=shifted)
    np.exp(shifted, out=shifted)
    return np.log(np.add.reduce(shifted, axis=-1)) + peak[:, 0]


def target_logprobs(x, head_weights, targets, rows_at_once=256):  # [n, n_embd], [n] -> [n]
    """log p(targets[i] | the context that produced x[i]); the head runs on a few rows at a time,
    since all n_ctx rows of logits at once would take n_ctx * n_vocab * 4 bytes (200 MB for GPT-2)."""
    out = np.empty(len(targets), dtype=np.float32)
    for i in range(0, len(targets), rows_at_once):
        logits = x[i : i + rows_at_once] @ head_weights.T  # [rows, n_embd] -> [rows, n_vocab]
        out[i : i + rows_at_once] = logits[np.arange(len(logits)), targets[i : i + rows_at_once]] - log_sum_exp(logits)
    return out


def scoring_windows(tokens, params, n_head, stride):  # [n_tokens] -> (start, [n, n_embd]) for each window
    """The hidden states that predict each token after the first, a window at a time: yields (start, x),
    where x[i] predicts tokens[start + i], for texts longer than n_ctx too.

    Windows of n_ctx tokens start every `stride` tokens; each gives only the rows for tokens that no
    earlier window covered, so every token but the first is predicted once, with at least
    n_ctx - stride tokens of context once the text is longer than a window (HuggingFace's
    perplexity guide does the same).
    """
    n_ctx = params["wpe"].shape[0]
    if not 1 <= stride < n_ctx:
        raise ValueError(f"stride must be from 1 to n_ctx - 1 = {n_ctx - 1}, so that windows overlap")
    scored = 1  # the first token has no context to be predicted from
    for begin in range(0, len(tokens), stride):
        end = min(begin + n_ctx, len(tokens))
        x = transformer(tokens[begin:end], **params, n_head=n_head)  # [end - begin, n_embd]
        yield scored, x[scored - 1 - begin : end - 1 - begin]  # the rows that predict tokens scored .. end - 1
        scored = end
        if end == len(tokens):
            break


def token_logprobs(tokens, params, n_head, stride, rows_at_once=256, progress=None):  # [n_tokens] -> [n_tokens - 1]
    """log p(tokens[i] | earlier tokens) for i >= 1, windowed as scoring_windows says.
    progress(n_scored), if given, is called after each window."""
    tokens = np.asarray(tokens)
    logprobs = np.empty(len(tokens) - 1, dtype=np.float32)
    for start, x in scoring_windows(tokens, params, n_head, stride):
        end = start + len(x)
        logprobs[start - 1 : end - 1] = target_logprobs(x, head(**params), tokens[start:end], rows_at_once)
        if progress is not None:
            progress(end - 1)
    return logprobs


if __name__ == "__main__":
    import cli  # the command line lives in cli.py; this keeps picoGPT's `python gpt2.py PROMPT` working

    cli.main()
