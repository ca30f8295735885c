"""GPT-2 in plain NumPy: the model, fast generation with a key/value cache, and the command line.

Read top-down: small building blocks, attention and the transformer block, the model, then
generation, sampling and scoring, then the command line. gpt2_pico.py is the same model without the
cache or the batch axis, as a tutorial: read it first.

Everything is float32. The model takes a batch of token rows, [n_batch, n_seq], so that several
prompts can share each forward pass; one prompt is a batch of one. Shapes are written
[n_batch, n_seq, n_embd] etc. next to each line that changes one.
"""
import argparse
import io
import json
import math
import os
import sys

import numpy as np


def gelu(x):
    """GELU as GPT-2 computes it, the tanh approximation ("gelu_new" in HuggingFace transformers):
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))), as gpt2_pico.py writes it.

    Here it is computed in one buffer, updated in place: GELU runs on the widest activations
    (4 * n_embd per token), where each temporary array of the one-line form costs time.
    """
    y = x * x  # x * x * x, not x**3: NumPy computes a float32 power with a generic pow, ~300x slower
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
    # means as sum * (1/n): np.mean's Python wrapper made it 2.5x slower on a decoding step's one row
    inverse_n = 1 / x.shape[-1]
    centered = x - np.sum(x, axis=-1, keepdims=True) * inverse_n
    variance = np.sum(centered * centered, axis=-1, keepdims=True) * inverse_n  # np.var would center x again
    return centered * (g / np.sqrt(variance + eps)) + b


def linear(x, w, b):  # [..., n_in] -> [..., n_out]
    y = x.reshape(-1, w.shape[0]) @ w  # one 2-D product for all rows: on 3-D input NumPy would loop over them
    y += b  # in place: filling a second fresh array took as long as a third of the product itself
    return y.reshape(*x.shape[:-1], w.shape[1])


def ffn(x, c_fc, c_proj):  # [n_batch, n_seq, n_embd] -> [n_batch, n_seq, n_embd]
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


def attention(q, keys, values, mask):  # [n_batch, n_head, n_seq, head_dim], [.., head_dim, n_kv], [.., n_kv, head_dim] -> [n_batch, n_head, n_seq, head_dim]
    q = q * (1 / math.sqrt(q.shape[-1]))  # scale the queries (fewer numbers than the scores)
    scores = q @ keys  # [.., n_seq, head_dim] @ [.., head_dim, n_kv] -> [n_batch, n_head, n_seq, n_kv]
    if mask is not None:  # None: one new token per row and no padding, so nothing to hide
        scores += mask
    # softmax, in place: scores is ours, and n_head * n_seq * n_kv floats are worth not copying 4 times
    scores -= np.max(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= np.sum(scores, axis=-1, keepdims=True)
    return scores @ values  # [.., n_seq, n_kv] @ [.., n_kv, head_dim] -> [n_batch, n_head, n_seq, head_dim]


def remember(kv, k, v, start):  # [n_batch, n_head, n_seq, head_dim] x2 -> [.., head_dim, n_kv], [.., n_kv, head_dim]
    """Store this step's keys and values in the layer's cache; return all of them so far.

    Keys are kept transposed, [head_dim, n_kv] for each head, so that q @ keys is a plain matrix
    product (on a transposed view NumPy's batched product measured 4x slower).
    """
    if kv is None:  # no cache: attend over this call's own tokens only (start must be 0)
        return np.ascontiguousarray(k.swapaxes(-1, -2)), v
    keys, values = kv  # [n_batch, n_head, head_dim, n_cache], [n_batch, n_head, n_cache, head_dim]
    end = start + k.shape[2]
    keys[..., start:end] = k.swapaxes(-1, -2)
    values[..., start:end, :] = v
    return keys[..., :end], values[..., :end, :]


def mha(x, c_attn, c_proj, n_head, kv, start, mask):  # [n_batch, n_seq, n_embd] -> [n_batch, n_seq, n_embd]
    n_batch, n_seq, n_embd = x.shape
    qkv = linear(x, **c_attn)  # [n_batch, n_seq, n_embd] -> [n_batch, n_seq, 3*n_embd]
    q, k, v = qkv.reshape(n_batch, n_seq, 3, n_head, -1).transpose(2, 0, 3, 1, 4)  # -> 3 x [n_batch, n_head, n_seq, head_dim]
    keys, values = remember(kv, k, v, start)  # [.., head_dim, n_kv], [.., n_kv, head_dim]; n_kv = start + n_seq
    out = attention(q, keys, values, mask)  # all heads in one batched product: [n_batch, n_head, n_seq, head_dim]
    out = out.transpose(0, 2, 1, 3).reshape(n_batch, n_seq, n_embd)  # -> [n_batch, n_seq, n_embd]
    return linear(out, **c_proj)  # [n_batch, n_seq, n_embd] -> [n_batch, n_seq, n_embd]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, kv, start, mask):  # [n_batch, n_seq, n_embd] -> same
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, kv=kv, start=start, mask=mask)  # pre-norm attention
    x = x + ffn(layer_norm(x, **ln_2), **mlp)  # pre-norm feed-forward
    return x


def transformer(inputs, wte, wpe, blocks, ln_f, n_head, kv_cache=None, start=0, n_pad=None):  # [n_batch, n_seq] -> [n_batch, n_seq, n_embd]
    """The hidden states after the final layer norm, for the tokens at index start .. start + n_seq - 1
    of each (left-padded) row; n_pad[i] is the number of padding tokens at the start of row i."""
    inputs = np.asarray(inputs)
    n_batch, n_seq = inputs.shape
    n_pad = np.zeros(n_batch, dtype=np.int64) if n_pad is None else n_pad
    x = wte[inputs] + wpe[positions(n_pad, n_seq, start)]  # [n_batch, n_seq] -> [n_batch, n_seq, n_embd]
    needs_mask = n_seq > 1 or n_pad.any()  # a single new token may see everything before it
    mask = attention_mask(n_pad, n_seq, start) if needs_mask else None  # [n_batch, 1, n_seq, start + n_seq]
    for layer, block in enumerate(blocks):
        kv = None if kv_cache is None else kv_cache[layer]  # (keys, values) of this layer
        x = transformer_block(x, **block, n_head=n_head, kv=kv, start=start, mask=mask)
    return layer_norm(x, **ln_f)


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head):  # [n_seq] -> [n_seq, n_vocab]
    """picoGPT's API: the logits of every position of one sequence."""
    x = transformer([inputs], wte, wpe, blocks, ln_f, n_head)[0]  # [n_seq] -> [1, n_seq, n_embd] -> [n_seq, n_embd]
    return x @ wte.T  # the head reuses the token embeddings: [n_seq, n_embd] -> [n_seq, n_vocab]


def new_kv_cache(params, n_head, n_batch, n_tokens):  # -> n_layer x ([n_batch, n_head, head_dim, n_tokens], [n_batch, n_head, n_tokens, head_dim])
    """Room for the keys and values of n_tokens positions in every layer, allocated once.

    np.empty reserves address space only: pages count in memory once generation writes them.
    """
    n_layer, n_embd = len(params["blocks"]), params["wpe"].shape[1]
    keys = np.empty((n_layer, n_batch, n_head, n_embd // n_head, n_tokens), dtype=np.float32)
    values = np.empty((n_layer, n_batch, n_head, n_tokens, n_embd // n_head), dtype=np.float32)
    return list(zip(keys, values))


class ContextError(ValueError):
    """The prompt and the tokens to generate do not fit the model's context."""


def check_context(n_prompt, n_tokens_to_generate, n_ctx):
    if n_prompt < 1:
        raise ContextError("a prompt is empty: start from [encoder.eot_token] for an unconditional sample")
    if n_prompt + n_tokens_to_generate > n_ctx:
        raise ContextError(
            f"the prompt ({n_prompt} tokens) plus {n_tokens_to_generate} new tokens exceeds the model's "
            f"context of {n_ctx} tokens: shorten the prompt or generate fewer tokens"
        )


def left_pad(prompts, pad_token=0):  # n_batch lists of token ids -> [n_batch, n_longest], [n_batch]
    """Right-align the prompts so that every row's next token goes in the same column."""
    n_longest = max(len(prompt) for prompt in prompts)
    tokens = np.full((len(prompts), n_longest), pad_token, dtype=np.int64)
    for row, prompt in enumerate(prompts):
        tokens[row, n_longest - len(prompt) :] = prompt
    return tokens, n_longest - np.array([len(prompt) for prompt in prompts])


def generate_batch_steps(prompts, params, n_head, n_tokens_to_generate, picks=None):
    """Yield (tokens [n_batch], logits [n_batch, n_vocab]) for each new token of several prompts at once.

    One pass over the (left-padded) prompts, then one token per prompt per step: the key/value cache
    lets each step run the blocks on the new tokens only, and the head (the largest matrix) is applied
    to the last position only. picks[i](logits) chooses prompt i's token (default: greedy).
    """
    for prompt in prompts:
        check_context(len(prompt), n_tokens_to_generate, params["wpe"].shape[0])
    picks = picks or [np.argmax] * len(prompts)
    tokens, n_pad = left_pad(prompts)  # [n_batch, n_longest], [n_batch]
    kv_cache = new_kv_cache(params, n_head, len(prompts), tokens.shape[1] + n_tokens_to_generate)
    x = transformer(tokens, **params, n_head=n_head, kv_cache=kv_cache, n_pad=n_pad)  # [n_batch, n_longest, n_embd]
    for step in range(n_tokens_to_generate):
        logits = x[:, -1] @ params["wte"].T  # [n_batch, n_embd] -> [n_batch, n_vocab]
        new_tokens = [int(pick(row)) for pick, row in zip(picks, logits)]
        yield new_tokens, logits
        if step + 1 < n_tokens_to_generate:  # no forward pass after the last token
            start = tokens.shape[1] + step
            x = transformer([[t] for t in new_tokens], **params, n_head=n_head, kv_cache=kv_cache, start=start, n_pad=n_pad)


def generate_steps(inputs, params, n_head, n_tokens_to_generate, pick=np.argmax):
    """Yield (token, logits [n_vocab]) for each new token of one prompt."""
    for tokens, logits in generate_batch_steps([list(inputs)], params, n_head, n_tokens_to_generate, [pick]):
        yield tokens[0], logits[0]


def generate(inputs, params, n_head, n_tokens_to_generate, pick=np.argmax):
    """picoGPT's API: the list of new token ids (greedy unless pick says otherwise)."""
    return [token for token, _ in generate_steps(inputs, params, n_head, n_tokens_to_generate, pick)]


def generate_completions(prompts, params, n_head, n_tokens_to_generate, picks=None, eot_token=None):
    """The new tokens of each prompt, generated together; a prompt is done at eot_token (not included)."""
    completions = [[] for _ in prompts]
    done = [False] * len(prompts)
    for tokens, _ in generate_batch_steps(prompts, params, n_head, n_tokens_to_generate, picks):
        for row, token in enumerate(tokens):
            done[row] = done[row] or token == eot_token
            if not done[row]:
                completions[row].append(token)
        if all(done):
            break
    return completions


# ---------------------------------------------------------------- sampling


def sampling_probs(logits, temperature=1.0, top_k=0, top_p=1.0):  # [n_vocab] -> [n_vocab]
    """The distribution a token is drawn from: softmax(logits / T), keeping only the top_k most likely
    tokens (0: all), then the smallest set of most likely tokens whose probability reaches top_p, renormalised.
    """
    probs = softmax(logits / np.float32(temperature))
    order = np.argsort(-probs, kind="stable")  # most likely first; ties keep the lower id first, like argmax
    kept = order[:top_k] if top_k else order
    kept_probs = probs[kept] / np.sum(probs[kept])
    mass_before = np.cumsum(kept_probs) - kept_probs  # probability of the tokens ranked above each one
    kept = kept[mass_before < top_p]  # the first token always stays: mass_before is 0 there
    filtered = np.zeros_like(probs)
    filtered[kept] = probs[kept]
    return filtered / np.sum(filtered)


def make_picker(temperature=0.0, top_k=0, top_p=1.0, seed=None):
    """pick(logits) -> token id. Temperature 0 is greedy; otherwise draw from sampling_probs with a seeded RNG."""
    if temperature == 0:
        return np.argmax
    rng = np.random.default_rng(seed)

    def pick(logits):
        cumulative = np.cumsum(sampling_probs(logits, temperature, top_k, top_p))
        # inverse transform sampling; the min guards against float32 round-off leaving the total below 1
        return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(logits) - 1)

    return pick


# ---------------------------------------------------------------- scoring


def target_logprobs(x, wte, targets, rows_at_once=256):  # [n, n_embd], [n] -> [n]
    """log p(targets[i] | the context that produced x[i]); the head runs on a few rows at a time,
    since all n_ctx rows of logits at once would take n_ctx * n_vocab * 4 bytes (200 MB for GPT-2)."""
    out = np.empty(len(targets), dtype=np.float32)
    for i in range(0, len(targets), rows_at_once):
        logits = x[i : i + rows_at_once] @ wte.T  # [rows, n_embd] -> [rows, n_vocab]
        peak = np.max(logits, axis=-1, keepdims=True)
        log_total = np.log(np.sum(np.exp(logits - peak), axis=-1)) + peak[:, 0]  # log-sum-exp: [rows]
        out[i : i + rows_at_once] = logits[np.arange(len(logits)), targets[i : i + rows_at_once]] - log_total
    return out


def token_logprobs(tokens, params, n_head, stride):  # [n_tokens] -> [n_tokens - 1]
    """log p(tokens[i] | earlier tokens) for i >= 1, with a sliding window for texts longer than n_ctx.

    Windows of n_ctx tokens start every `stride` tokens; each scores only the tokens that no earlier
    window scored, so every token but the first is scored once, with at least n_ctx - stride tokens
    of context once the text is longer than a window (HuggingFace's perplexity guide does the same).
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
        logprobs[scored - 1 : end - 1] = target_logprobs(predictors, params["wte"], tokens[scored:end])
        scored = end
        if end == len(tokens):
            break
    return logprobs


# ---------------------------------------------------------------- command line


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text):
    value = int(text)  # argparse turns a ValueError into "invalid positive_int value: 'x'"
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0 or math.isinf(value):  # also rejects nan
        raise ValueError(text)
    return value


def probability(text):
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def parse_args(argv=None):
    from utils import MODEL_SIZES

    parser = OneLineErrorParser(
        description="Continue a prompt with OpenAI's GPT-2, in plain NumPy; or many prompts; or score a text.",
        epilog="A prompt that starts with '-' goes after '--', e.g. gpt2.py -- '-1 is a number'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", help="text to continue, exactly as typed ('' for an unconditional sample)")
    parser.add_argument("--n_tokens_to_generate", type=positive_int, default=40, help="how many tokens to add")
    parser.add_argument("--model_size", choices=MODEL_SIZES, default="124M", help="which GPT-2 release")
    parser.add_argument("--models_dir", default=None, help="where model files are kept; it must exist (default: ./models, created on first use)")
    parser.add_argument("--base_url", default=None, help="download from here instead of OpenAI's bucket (or set GPT2_BASE_URL)")
    parser.add_argument("--threads", type=positive_int, default=None, help="BLAS threads (default: as OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else all cores)")
    sampling = parser.add_argument_group("choosing tokens")
    sampling.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy; higher: more random")
    sampling.add_argument("--top_k", type=non_negative_int, default=0, help="sample among the K most likely tokens (0: all)")
    sampling.add_argument("--top_p", type=probability, default=1.0, help="sample among the most likely tokens holding this much probability (1: all)")
    sampling.add_argument("--seed", type=non_negative_int, default=None, help="random seed: the same seed gives the same sample")
    sampling.add_argument("--ignore_eos", action="store_true", help="keep going after <|endoftext|> instead of stopping")
    sampling.add_argument("--show_probs", type=non_negative_int, default=0, metavar="K", help="print the top K candidates of every step on stderr")
    batch = parser.add_argument_group("many prompts")
    batch.add_argument("--prompts_file", metavar="PATH", help='generate for each line of PATH (of a .jsonl file: each {"prompt": ...}); prints JSON Lines')
    batch.add_argument("--batch_size", type=positive_int, default=8, help="how many prompts share each forward pass")
    batch.add_argument("--output", metavar="PATH", help="write the JSON Lines here; run again with the same arguments to continue an interrupted run")
    scoring = parser.add_argument_group("scoring a text")
    scoring.add_argument("--score", metavar="PATH", help="print the average negative log-likelihood and perplexity of PATH's text ('-': standard input)")
    scoring.add_argument("--stride", type=positive_int, default=None, help="for texts longer than n_ctx, how far the window moves; below n_ctx (default: n_ctx // 2)")
    scoring.add_argument("--json", action="store_true", help="with --score: print JSON, with every token's log-probability")
    args = parser.parse_args(argv)
    if (args.prompt is not None) + (args.prompts_file is not None) + (args.score is not None) != 1:
        parser.error("give exactly one of: a prompt, --prompts_file PATH, --score PATH")
    for option, value, needs, mode in [
        ("--output", args.output, "--prompts_file", args.prompts_file),
        ("--json", args.json, "--score", args.score),
        ("--stride", args.stride, "--score", args.score),
        ("--show_probs", args.show_probs, "a single prompt", args.prompt),
    ]:
        if value and mode is None:
            parser.error(f"{option} goes with {needs}")
    return args


def token_repr(encoder, token):
    return repr(encoder.decode([token]))


def describe_step(encoder, step, logits, token, k):
    """One line for --show_probs: the model's top k next tokens with their probabilities, and the pick."""
    probs = softmax(logits)  # the model's own distribution (temperature 1, before any filtering)
    top = np.argsort(-probs, kind="stable")[:k]
    candidates = "  ".join(f"{token_repr(encoder, t)} {probs[t]:.1%}" for t in top)
    return f"step {step + 1:>4}: chose {token_repr(encoder, token)} ({probs[token]:.1%})  | {candidates}"


def stream_continuation(encoder, steps, eot_token, show_probs, out, err):
    """Write each token's text to `out` as soon as it forms complete UTF-8 characters; stop at eot_token."""
    import codecs

    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds back a split character
    for step, (token, logits) in enumerate(steps):
        if show_probs:
            print(describe_step(encoder, step, logits, token, show_probs), file=err, flush=True)
        if token == eot_token:
            break
        out.write(utf8.decode(encoder.decode_bytes([token])).encode("utf-8"))
        out.flush()
    out.write(utf8.decode(b"", final=True).encode("utf-8"))
    out.flush()


def load_model(args):
    from utils import GPT2Error, load_encoder_hparams_and_params

    models_dir = args.models_dir or "models"
    if args.models_dir is not None and not os.path.isdir(models_dir):  # a typo should not start a download elsewhere
        raise GPT2Error(f"--models_dir {models_dir} is not a directory: create it or check the path")
    return load_encoder_hparams_and_params(args.model_size, models_dir, args.base_url)


def run_prompt(args):
    encoder, hparams, params = load_model(args)
    inputs = encoder.encode(args.prompt) or [encoder.eot_token]  # empty prompt: start a new document
    check_context(len(inputs), args.n_tokens_to_generate, hparams["n_ctx"])
    pick = make_picker(args.temperature, args.top_k, args.top_p, args.seed)
    steps = generate_steps(inputs, params, hparams["n_head"], args.n_tokens_to_generate, pick)
    eot_token = None if args.ignore_eos else encoder.eot_token
    # on one terminal, text streamed between the --show_probs rows would break them: text after rows
    one_terminal = args.show_probs and sys.stdout.isatty() and sys.stderr.isatty()
    out = io.BytesIO() if one_terminal else sys.stdout.buffer
    stream_continuation(encoder, steps, eot_token, args.show_probs, out, sys.stderr)
    if one_terminal:
        sys.stdout.buffer.write(out.getvalue())
        sys.stdout.flush()
    if sys.stdout.isatty():
        print()  # end the line in a terminal; files and pipes get exactly the continuation


def completion_record(line, prompt, completion, tokens):
    """One line of JSON Lines output; utils.RECORD_START relies on "line" coming first."""
    record = {"line": line, "prompt": prompt, "completion": completion, "tokens": tokens}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def run_prompts_file(args):
    from utils import count_finished_records, read_prompts

    prompts = read_prompts(args.prompts_file)  # all of it is checked before the model loads
    encoder, hparams, params = load_model(args)
    encoded = [encoder.encode(prompt) or [encoder.eot_token] for _, prompt in prompts]
    for (number, _), tokens in zip(prompts, encoded):  # every prompt must fit before any work starts
        try:
            check_context(len(tokens), args.n_tokens_to_generate, hparams["n_ctx"])
        except ContextError as e:
            raise ContextError(f"{args.prompts_file} line {number}: {e}") from None
    first = count_finished_records(args.output, prompts) if args.output else 0
    if args.output:
        with open(args.output, "ab") as out:
            write_completions(args, encoder, params, hparams["n_head"], prompts, encoded, first, out)
    else:
        write_completions(args, encoder, params, hparams["n_head"], prompts, encoded, first, sys.stdout.buffer)


def write_completions(args, encoder, params, n_head, prompts, encoded, first, out):
    """Generate for prompts[first:] in batches, writing each batch's records as soon as it is done."""
    eot_token = None if args.ignore_eos else encoder.eot_token
    for start in range(first, len(prompts), args.batch_size):
        rows = range(start, min(start + args.batch_size, len(prompts)))
        # each prompt draws from its own generator, so a sample does not depend on the batch size
        seeds = [None if args.seed is None else [args.seed, row] for row in rows]
        picks = [make_picker(args.temperature, args.top_k, args.top_p, seed) for seed in seeds]
        batch = [encoded[row] for row in rows]
        completions = generate_completions(batch, params, n_head, args.n_tokens_to_generate, picks, eot_token)
        out.write(b"".join(completion_record(*prompts[row], encoder.decode(new), new) for row, new in zip(rows, completions)))
        out.flush()
        if out is not sys.stdout.buffer:
            os.fsync(out.fileno())  # a finished batch survives a crash or a power cut


def run_score(args):
    from utils import GPT2Error, read_text

    text = read_text(args.score)
    encoder, hparams, params = load_model(args)
    tokens = encoder.encode(text)
    if len(tokens) < 2:
        raise GPT2Error(f"{args.score} has {len(tokens)} token(s): scoring needs at least 2")
    stride = args.stride or hparams["n_ctx"] // 2
    if stride >= hparams["n_ctx"]:  # windows must overlap, or each window's first token has no context
        raise GPT2Error(f"--stride {stride} must be smaller than the model's context ({hparams['n_ctx']} tokens)")
    logprobs = token_logprobs(tokens, params, hparams["n_head"], stride)
    nll = -math.fsum(logprobs.tolist()) / len(logprobs)  # average negative log-likelihood, nats per token
    summary = {"n_tokens_scored": len(logprobs), "avg_nll": nll, "perplexity": math.exp(nll), "stride": stride}
    if args.json:
        # a token holding part of a character's bytes shows U+FFFD in "text"; "token" is exact
        per_token = [{"token": t, "text": encoder.decode([t]), "logprob": float(lp)} for t, lp in zip(tokens[1:], logprobs)]
        print(json.dumps({**summary, "tokens": per_token}, ensure_ascii=False))
    else:
        print(f"tokens scored: {len(logprobs)} (the first token has no context)")
        print(f"average negative log-likelihood: {nll:.4f} nats/token")
        print(f"perplexity: {math.exp(nll):.4f}")


def run(args):
    if args.score is not None:
        run_score(args)
    elif args.prompts_file is not None:
        run_prompts_file(args)
    else:
        run_prompt(args)


def main(argv=None):
    args = parse_args(argv)
    from utils import GPT2Error

    try:
        if args.threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        run(args)
    except (GPT2Error, ContextError) as e:
        sys.exit(f"gpt2.py: error: {e}")
    except MemoryError:
        sys.exit("gpt2.py: error: out of memory: use a smaller --batch_size, fewer tokens or a smaller model")
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has gone, nothing left to say
        sys.stderr.close()
        sys.exit(141)


if __name__ == "__main__":
    main()
