"""GPT-2 in plain NumPy: the model, fast generation with a key/value cache, sampling and scoring.

Read top-down: small building blocks, attention and the transformer block, the model, then
generation, sampling and scoring. gpt2_pico.py is the same model without the cache or the batch
axis, as a tutorial: read it first. This file is a library; `python gpt2.py PROMPT ...` hands over
to the command line in cli.py.

Everything is float32. The model takes a batch of token rows, [n_batch, n_seq], so that several
prompts can share each forward pass; one prompt is a batch of one. A shape comment follows each
line that changes a shape. Where a def line would run long, axes get short names:
B = n_batch, T = n_seq (the new tokens), H = n_head, D = head_dim = n_embd / n_head, E = n_embd,
K = n_kv (all keys so far: cached and new).
"""
import math

import numpy as np

from errors import ContextError


def gelu(x):
    """GELU as GPT-2 computes it, the tanh approximation ("gelu_new" in HuggingFace transformers):
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))), as gpt2_pico.py writes it.

    Here it is computed in one buffer, updated in place: GELU runs on the widest activations
    (4 * n_embd per token), where each temporary array of the one-line form costs time.
    """
    y = x * x  # x * x * x, not x**3: NumPy computes a float32 power with a slow generic pow
    y *= x
    y *= 0.044715
    y += x
    y *= math.sqrt(2 / math.pi)  # math.sqrt keeps a Python float; np.sqrt's float64 would promote y
    np.tanh(y, out=y)
    y += 1
    y *= x
    y *= 0.5
    return y


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))  # subtract the max so exp cannot overflow
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # [..., n_embd] -> [..., n_embd]
    # means as sum * (1/n): np.mean's Python-level wrapper dominates on a decoding step's one row
    inverse_n = 1 / x.shape[-1]
    centered = x - np.sum(x, axis=-1, keepdims=True) * inverse_n
    variance = np.sum(centered * centered, axis=-1, keepdims=True) * inverse_n  # np.var would center x again
    return centered * (g / np.sqrt(variance + eps)) + b


def linear(x, w, b):  # [..., n_in] -> [..., n_out]
    y = x.reshape(-1, w.shape[0]) @ w  # one 2-D product for all rows: on 3-D input NumPy would loop over them
    y += b  # in place: filling a second fresh array costs about as much as a small product
    return y.reshape(*x.shape[:-1], w.shape[1])


def ffn(x, c_fc, c_proj):  # [B, T, E] -> [B, T, E]
    return linear(gelu(linear(x, **c_fc)), **c_proj)  # [.., n_embd] -> [.., 4*n_embd] -> [.., n_embd]


def positions(n_pad, n_seq, start):  # [n_batch] -> [n_batch, n_seq]
    """Position ids that ignore left padding: each row's first real token is at position 0."""
    return np.maximum(np.arange(start, start + n_seq) - n_pad[:, None], 0)


def attention_mask(n_pad, n_seq, start):  # [n_batch] -> [n_batch, 1, n_seq, start + n_seq]
    """0 where a query may look, -inf where it may not: at later tokens, and at its row's left padding.

    A padding query sees only itself (its output is never used), so no row of scores is all -inf.
    """
    query = np.arange(start, start + n_seq)[:, None]  # [n_seq, 1] index in the padded row
    key = np.arange(start + n_seq)  # [n_kv]
    pad = n_pad[:, None, None]  # [n_batch, 1, 1]
    visible = (key <= query) & ((key >= pad) | (key == query))  # -> [n_batch, n_seq, n_kv]
    return np.where(visible, np.float32(0), np.float32(-np.inf))[:, None]  # -> [n_batch, 1, n_seq, n_kv]


def attention(q, keys, values, mask, trace=None):  # [B, H, T, D], [B, H, D, K], [B, H, K, D] -> [B, H, T, D]
    q = q * (1 / math.sqrt(q.shape[-1]))  # scale the queries (fewer numbers than the scores)
    scores = q @ keys  # [B, H, T, D] @ [B, H, D, K] -> [B, H, T, K]
    if mask is not None:  # None: one new token per row and no padding, so nothing to hide
        scores += mask
    # softmax, in place: scores is ours, and n_head * n_seq * n_kv floats are worth not copying 4 times
    scores -= np.max(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= np.sum(scores, axis=-1, keepdims=True)
    if trace is not None:  # explain.py looks at the attention weights the model really used
        trace.attention(scores)
    return scores @ values  # [B, H, T, K] @ [B, H, K, D] -> [B, H, T, D]


def remember(kv, k, v, start):  # [B, H, T, D] x2 -> [B, H, D, K], [B, H, K, D]
    """Store this step's keys and values in the layer's cache; return all of them so far.

    Keys are kept transposed, [head_dim, n_kv] for each head, so that q @ keys is a plain matrix
    product: NumPy's batched product on a transposed view is several times slower.
    """
    if kv is None:  # no cache: attend over this call's own tokens only (start must be 0)
        return np.ascontiguousarray(k.swapaxes(-1, -2)), v
    keys, values = kv  # [B, H, D, n_cache], [B, H, n_cache, D]
    end = start + k.shape[2]
    keys[..., start:end] = k.swapaxes(-1, -2)
    values[..., start:end, :] = v
    return keys[..., :end], values[..., :end, :]


def mha(x, c_attn, c_proj, n_head, kv, start, mask, trace=None):  # [B, T, E] -> [B, T, E]
    n_batch, n_seq, n_embd = x.shape
    qkv = linear(x, **c_attn)  # [B, T, E] -> [B, T, 3*E]
    q, k, v = qkv.reshape(n_batch, n_seq, 3, n_head, -1).transpose(2, 0, 3, 1, 4)  # -> 3 x [B, H, T, D]
    keys, values = remember(kv, k, v, start)  # [B, H, D, K], [B, H, K, D]; K = start + T
    out = attention(q, keys, values, mask, trace)  # all heads in one batched product: [B, H, T, D]
    out = out.transpose(0, 2, 1, 3).reshape(n_batch, n_seq, n_embd)  # [B, H, T, D] -> [B, T, E]
    return linear(out, **c_proj)  # [B, T, E] -> [B, T, E]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, kv, start, mask, trace=None):  # [B, T, E] -> [B, T, E]
    # pre-norm: each half reads a layer-normed x and adds its output to x, the residual stream
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, kv=kv, start=start, mask=mask, trace=trace)
    x = x + ffn(layer_norm(x, **ln_2), **mlp)
    return x


def transformer(inputs, wte, wpe, blocks, ln_f, n_head, kv_cache=None, start=0, n_pad=None, lm_head=None, trace=None):
    # [B, T] -> [B, T, E]
    """The hidden states after the final layer norm, for the tokens at index start .. start + n_seq - 1
    of each (left-padded) row; n_pad[i] is the number of padding tokens at the start of row i.
    (lm_head, an untied output head, is the callers' business: see head.) A trace, if given, is
    shown each layer's attention weights and the residual stream after each block (explain.py)."""
    inputs = np.asarray(inputs)
    n_batch, n_seq = inputs.shape
    n_pad = np.zeros(n_batch, dtype=np.int64) if n_pad is None else n_pad
    x = wte[inputs] + wpe[positions(n_pad, n_seq, start)]  # [B, T] -> [B, T, E]
    needs_mask = n_seq > 1 or n_pad.any()  # a single new token may see everything before it
    mask = attention_mask(n_pad, n_seq, start) if needs_mask else None  # [B, 1, T, start + T]
    for layer, block in enumerate(blocks):
        kv = None if kv_cache is None else kv_cache[layer]  # (keys, values) of this layer
        x = transformer_block(x, **block, n_head=n_head, kv=kv, start=start, mask=mask, trace=trace)
        if trace is not None:
            trace.residual(x)
    return layer_norm(x, **ln_f)


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head, lm_head=None):  # [n_seq] -> [n_seq, n_vocab]
    """picoGPT's API: the logits of every position of one sequence."""
    x = transformer([inputs], wte, wpe, blocks, ln_f, n_head)[0]  # [n_seq] -> [1, n_seq, n_embd] -> [n_seq, n_embd]
    return x @ head(wte, lm_head).T  # [n_seq, n_embd] -> [n_seq, n_vocab]


def head(wte, lm_head=None, **_):  # -> [n_vocab, n_embd]
    """The output head: GPT-2's reuses the token embeddings (tied); some fine-tunes have their own."""
    return wte if lm_head is None else lm_head


def new_kv_cache(params, n_head, n_batch, n_tokens):  # -> n_layer x ([B, H, D, n_tokens], [B, H, n_tokens, D])
    """Room for the keys and values of n_tokens positions in every layer, allocated once.

    np.empty reserves address space only: pages count in memory once generation writes them.
    """
    n_layer, n_embd = len(params["blocks"]), params["wpe"].shape[1]
    keys = np.empty((n_layer, n_batch, n_head, n_embd // n_head, n_tokens), dtype=np.float32)
    values = np.empty((n_layer, n_batch, n_head, n_tokens, n_embd // n_head), dtype=np.float32)
    return list(zip(keys, values))


def check_context(n_prompt, n_ctx):
    if n_prompt < 1:
        raise ContextError("a prompt is empty: start from [encoder.eot_token] for an unconditional sample")
    if n_prompt > n_ctx:
        raise ContextError(f"the prompt has {n_prompt} tokens, more than the model's context of {n_ctx} tokens: "
                           "shorten it (it is never cut silently)")


def left_pad(prompts, pad_token=0):  # n_batch lists of token ids -> [n_batch, n_longest], [n_batch]
    """Right-align the prompts so that every row's next token goes in the same column."""
    n_longest = max(len(prompt) for prompt in prompts)
    tokens = np.full((len(prompts), n_longest), pad_token, dtype=np.int64)
    for row, prompt in enumerate(prompts):
        tokens[row, n_longest - len(prompt) :] = prompt
    return tokens, n_longest - np.array([len(prompt) for prompt in prompts])


def generate_batch_steps(prompts, params, n_head, n_tokens_to_generate, picks=None, keep=None, on_shift=None):
    """Yield (tokens [n_batch], logits [n_batch, n_vocab]) for each new token of several prompts at once.

    One pass over the (left-padded) prompts, then one token per prompt per step: the key/value cache
    lets each step run the blocks on the new tokens only, and the head (the largest matrix) is applied
    to the last position only. picks[i](logits) chooses prompt i's token (default: greedy).

    Past the context window: once a row's window holds n_ctx tokens, it keeps its last `keep` tokens
    (default n_ctx // 2) at positions 0 .. keep - 1, as if they were a new prompt (see shift_rows),
    and goes on; on_shift(rows, step), if given, is told which rows shifted at which step.
    """
    n_ctx = params["wpe"].shape[0]
    for prompt in prompts:
        check_context(len(prompt), n_ctx)
    picks = picks or [np.argmax] * len(prompts)
    tokens, n_pad = left_pad(prompts)  # [n_batch, n_longest], [n_batch]
    n_longest = tokens.shape[1]
    can_overflow = n_longest + n_tokens_to_generate > n_ctx + 1  # else no row ever needs a position >= n_ctx
    capacity = n_ctx + n_ctx // 2 if can_overflow else n_longest + n_tokens_to_generate  # columns of the cache
    kv_cache = new_kv_cache(params, n_head, len(prompts), capacity)
    windows = [list(prompt) for prompt in prompts] if can_overflow else None  # each row's tokens in its window
    x = transformer(tokens, **params, n_head=n_head, kv_cache=kv_cache, n_pad=n_pad)  # [n_batch, n_longest, n_embd]
    column = n_longest  # where the next new tokens go in the cache
    head_t = head(**params).T  # [n_embd, n_vocab], a view
    for step in range(n_tokens_to_generate):
        logits = x[:, -1] @ head_t  # [n_batch, n_embd] -> [n_batch, n_vocab]
        new_tokens = [int(pick(row)) for pick, row in zip(picks, logits)]
        yield new_tokens, logits
        if step + 1 == n_tokens_to_generate:  # no forward pass after the last token
            break
        if can_overflow:
            for window, token in zip(windows, new_tokens):
                window.append(token)
            full = np.flatnonzero(column - n_pad >= n_ctx)  # rows whose next position would be n_ctx
            if len(full):
                shift_rows(full, windows, keep or n_ctx // 2, params, n_head, kv_cache, n_pad, column)
                if on_shift is not None:
                    on_shift(full.tolist(), step)
            if column == capacity:
                column = compact(kv_cache, n_pad, column)
        new = [[token] for token in new_tokens]  # [n_batch, 1]
        x = transformer(new, **params, n_head=n_head, kv_cache=kv_cache, start=column, n_pad=n_pad)
        column += 1


def shift_rows(rows, windows, keep, params, n_head, kv_cache, n_pad, column):
    """Make each row in `rows` continue from its last `keep` tokens, at positions 0 .. keep - 1.

    GPT-2's positions are absolute, so the kept tokens' keys and values change: they are computed
    anew, in one pass over all but the last kept token (the step that follows runs that one, as it
    runs every row's newest token). They go into the columns just before `column`, and the row's
    padding grows to hide everything older. Other rows are untouched.
    """
    kept = [windows[row][-keep:] for row in rows]
    for row, tokens in zip(rows, kept):
        windows[row][:] = tokens
    n_before = keep - 1  # the kept tokens already in the window before the newest
    if n_before:
        fresh = new_kv_cache(params, n_head, len(rows), n_before)
        transformer([tokens[:-1] for tokens in kept], **params, n_head=n_head, kv_cache=fresh)  # [len(rows), n_before]
        for (keys, values), (new_keys, new_values) in zip(kv_cache, fresh):
            keys[rows, ..., column - n_before : column] = new_keys  # [rows, H, D, n_before]
            values[rows, ..., column - n_before : column, :] = new_values  # [rows, H, n_before, D]
    n_pad[rows] = column - n_before


def compact(kv_cache, n_pad, column):
    """Drop the cache columns that are padding for every row, moving the rest to the front; the new column."""
    unused = int(n_pad.min())
    for keys, values in kv_cache:
        keys[..., : column - unused] = keys[..., unused:column]
        values[..., : column - unused, :] = values[..., unused:column, :]
    n_pad -= unused
    return column - unused


def generate_steps(inputs, params, n_head, n_tokens_to_generate, pick=np.argmax, keep=None, on_shift=None):
    """Yield (token, logits [n_vocab]) for each new token of one prompt."""
    steps = generate_batch_steps([list(inputs)], params, n_head, n_tokens_to_generate, [pick], keep, on_shift)
    for tokens, logits in steps:
        yield tokens[0], logits[0]


def generate(inputs, params, n_head, n_tokens_to_generate, pick=np.argmax, keep=None):
    """picoGPT's API: the list of new token ids (greedy unless pick says otherwise)."""
    return [token for token, _ in generate_steps(inputs, params, n_head, n_tokens_to_generate, pick, keep)]


def generate_completions(prompts, params, n_head, n_tokens_to_generate, picks=None, eot_token=None, keep=None):
    """The new tokens of each prompt, generated together; a prompt is done at eot_token (not included)."""
    completions = [[] for _ in prompts]
    done = [False] * len(prompts)
    for tokens, _ in generate_batch_steps(prompts, params, n_head, n_tokens_to_generate, picks, keep):
        for row, token in enumerate(tokens):
            done[row] = done[row] or token == eot_token
            if not done[row]:
                completions[row].append(token)
        if all(done):
            break
    return completions


# ---------------------------------------------------------------- scoring


def target_logprobs(x, head_weights, targets, rows_at_once=256):  # [n, n_embd], [n] -> [n]
    """log p(targets[i] | the context that produced x[i]); the head runs on a few rows at a time,
    since all n_ctx rows of logits at once would take n_ctx * n_vocab * 4 bytes (200 MB for GPT-2)."""
    out = np.empty(len(targets), dtype=np.float32)
    for i in range(0, len(targets), rows_at_once):
        logits = x[i : i + rows_at_once] @ head_weights.T  # [rows, n_embd] -> [rows, n_vocab]
        peak = np.max(logits, axis=-1, keepdims=True)
        log_total = np.log(np.sum(np.exp(logits - peak), axis=-1)) + peak[:, 0]  # log-sum-exp: [rows]
        out[i : i + rows_at_once] = logits[np.arange(len(logits)), targets[i : i + rows_at_once]] - log_total
    return out


def token_logprobs(tokens, params, n_head, stride, rows_at_once=256, progress=None):  # [n_tokens] -> [n_tokens - 1]
    """log p(tokens[i] | earlier tokens) for i >= 1, with a sliding window for texts longer than n_ctx.

    Windows of n_ctx tokens start every `stride` tokens; each scores only the tokens that no earlier
    window scored, so every token but the first is scored once, with at least n_ctx - stride tokens
    of context once the text is longer than a window (HuggingFace's perplexity guide does the same).
    progress(n_scored), if given, is called after each window.
    """
    tokens = np.asarray(tokens)
    n_ctx = params["wpe"].shape[0]
    if not 1 <= stride < n_ctx:
        raise ValueError(f"stride must be from 1 to n_ctx - 1 = {n_ctx - 1}, so that windows overlap")
    logprobs = np.empty(len(tokens) - 1, dtype=np.float32)
    scored = 1  # the first token has no context to be predicted from
    for begin in range(0, len(tokens), stride):
        end = min(begin + n_ctx, len(tokens))
        x = transformer([tokens[begin:end]], **params, n_head=n_head)[0]  # [end - begin, n_embd]
        predictors = x[scored - 1 - begin : end - 1 - begin]  # the rows that predict tokens scored .. end - 1
        targets = tokens[scored:end]
        logprobs[scored - 1 : end - 1] = target_logprobs(predictors, head(**params), targets, rows_at_once)
        scored = end
        if progress is not None:
            progress(scored - 1)
        if end == len(tokens):
            break
    return logprobs


if __name__ == "__main__":
    import cli  # the command line lives in cli.py; this keeps picoGPT's `python gpt2.py PROMPT` working

    cli.main()
