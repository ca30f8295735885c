"""--explain: what the model did with a prompt, as one self-contained HTML file (explain_page.py).

It shows the tokens of prompt and continuation, each generated step's top-10 candidates, the
attention weights of every layer and head, a logit lens (what each layer's residual stream would
predict through the final layer norm and the head), and the model card. The numbers are the
model's own: the candidates are the generation's logits; the attention weights and the residual
streams come from one more pass of gpt2.transformer itself, over the final text, with a Trace that
records them as the pass goes (the generation itself runs untraced, at full speed).
"""
import numpy as np

import gpt2

MAX_ATTENTION_CELLS = 24_000_000  # weights kept at full resolution (one byte each, then deflated)
THUMBNAIL = 64  # the grid's small heatmaps average the weights into at most 64 x 64 blocks
TOP_K = 10
LENS_ROWS = 128  # the logit lens's head runs on this many positions at a time


class Trace:
    """Handed to gpt2.transformer: keeps each layer's attention weights, reduced to what the page
    shows, and the logit lens of the residual stream after each block.

    attention(probs) and residual(x) are called once per layer, in order, by the forward pass.
    """

    def __init__(self, params: dict, n_rows: int):
        self.params, self.n_rows = params, n_rows  # n_rows: the last query rows kept at full resolution
        self.rows: list[np.ndarray] = []  # per layer: [H, n_rows, T] float32
        self.thumbnails: list[np.ndarray] = []  # per layer: [H, S, S] float32, block means
        self.lens_ids: list[np.ndarray] = []  # per layer: [T] the top next token
        self.lens_probs: list[np.ndarray] = []  # per layer: [T] its probability

    def attention(self, weights: np.ndarray) -> None:  # [H, T, T]
        self.rows.append(weights[:, -self.n_rows :].copy())  # [H, n_rows, T]
        self.thumbnails.append(block_means(weights, min(THUMBNAIL, weights.shape[-1])))

    def residual(self, x: np.ndarray) -> None:  # [T, E]
        ids, probs = logit_lens(x, self.params)
        self.lens_ids.append(ids)
        self.lens_probs.append(probs)


def block_means(weights: np.ndarray, size: int) -> np.ndarray:  # [H, T, T] -> [H, size, size]
    """Average the weights over a size x size grid of blocks (the blocks differ by at most one token)."""
    bounds = np.linspace(0, weights.shape[-1], size + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(weights, bounds[:-1], axis=1), bounds[:-1], axis=2)
    counts = np.diff(bounds)
    return sums / (counts[:, None] * counts[None, :])


def logit_lens(x: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:  # [T, E] -> [T], [T]
    """The top next token at every position, and its probability, if the stream x went straight to
    the final layer norm and the head."""
    head = gpt2.head(**params)
    ids = np.empty(len(x), dtype=np.int64)
    probs = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), LENS_ROWS):
        logits = gpt2.layer_norm(x[i : i + LENS_ROWS], **params["ln_f"]) @ head.T  # [rows, E] -> [rows, n_vocab]
        top = logits.max(axis=-1)
        ids[i : i + LENS_ROWS] = logits.argmax(axis=-1)
        probs[i : i + LENS_ROWS] = 1 / np.exp(logits - top[:, None]).sum(axis=-1)  # softmax at the top token
    return ids, probs


def traced_pass(tokens: list[int], params: dict, n_head: int) -> Trace:
    """One pass of the model over `tokens` (at most n_ctx), recording what the page shows."""
    n_layer = len(params["blocks"])
    n_rows = min(len(tokens), max(1, MAX_ATTENTION_CELLS // (n_layer * n_head * len(tokens))))
    trace = Trace(params, n_rows)
    gpt2.transformer(tokens, **params, n_head=n_head, batch=gpt2.Batch([len(tokens)], trace=trace))
    return trace


def top_candidates(logits: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
    """The k most likely next tokens at temperature 1, as --show_probs lists them."""
    probs = gpt2.softmax(logits)
    top = np.argsort(-probs, kind="stable")[:k]
    return [(int(t), float(probs[t])) for t in top]


def token_pieces(encoder: object, tokens: list[int]) -> list[dict]:
    """Each token's id, its bytes, and whether it starts or ends inside a UTF-8 character."""
    data = [encoder.decode_bytes([token]) for token in tokens]
    text = b"".join(data)
    starts = {i for i, byte in enumerate(text) if byte & 0xC0 != 0x80} | {len(text)}  # character boundaries
    pieces, position = [], 0
    for token, piece in zip(tokens, data):
        end = position + len(piece)
        pieces.append({"id": token, "text": piece.decode("utf-8", "replace"), "bytes": piece.hex(" "),
                       "split": bool(piece) and (position not in starts or end not in starts)})
        position = end
    return pieces


def explain_data(encoder: object, hparams: dict, params: dict, prompt: list[int], generated: list[int],
                 steps: list[list[tuple[int, float]]], card_text: str) -> dict:
    """Everything the page shows, as plain data (attention and lens as arrays)."""
    n_ctx = params["wpe"].shape[0]
    tokens = prompt + generated
    window = tokens[-n_ctx:]  # past the context the model never saw all of it at once
    trace = traced_pass(window, params, hparams["n_head"])
    n_rows, first = trace.n_rows, len(tokens) - len(window)
    return {
        "tokens": token_pieces(encoder, tokens), "n_prompt": len(prompt), "window_start": first,
        "steps": [{"chosen": token, "top": top} for token, top in zip(generated, steps)],
        "attention_rows": np.stack(trace.rows),  # [L, H, n_rows, T]
        "attention_thumbnails": np.stack(trace.thumbnails),  # [L, H, S, S]
        "lens_ids": np.stack(trace.lens_ids), "lens_probs": np.stack(trace.lens_probs),  # [L, T]
        "card": card_text,
        "notes": notes(len(tokens), len(window), n_rows, trace.thumbnails[0].shape[-1]),
    }


def notes(n_tokens: int, n_window: int, n_rows: int, thumbnail: int) -> list[str]:
    """What the page leaves out, said on the page."""
    said = []
    if n_window < n_tokens:
        said.append(f"The text has {n_tokens:,} tokens, more than the model's context: attention and the logit lens "
                    f"show the last {n_window:,}, the window the model last saw.")
    if n_rows < n_window:
        said.append(f"The large attention view shows the last {n_rows} of {n_window:,} query positions, against all "
                    f"keys, to keep this file small; the grid shows every position, averaged into {thumbnail} x "
                    f"{thumbnail} blocks.")
    elif thumbnail < n_window:
        said.append(f"The small heatmaps average the weights into {thumbnail} x {thumbnail} blocks.")
    return said


def as_bytes(weights: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] as one byte each, on a square-root scale so that small weights stay visible."""
    return np.round(np.sqrt(np.clip(weights, 0, 1)) * 255).astype(np.uint8)


def from_bytes(stored: np.ndarray) -> np.ndarray:
    """as_bytes undone, to within its rounding."""
    return (stored.astype(np.float32) / 255) ** 2


# ---------------------------------------------------------------- --score --explain: a text the user already has


def scored_positions(tokens: list[int], params: dict, n_head: int, stride: int, rows_at_once: int = 256,
                     progress: object = None) -> dict:
    """For every token but the first: its log-probability, its rank in the model's prediction (1 is
    the most likely; ties count in its favour) and the model's top TOP_K there.

    The windows (gpt2.scoring_windows), the chunks of rows and the float32 arithmetic of the
    log-probabilities are those of gpt2.token_logprobs, so the log-probabilities are the same numbers, bit for bit, as
    `--score --json` prints (a test checks it); ranks and the top k come from the same logits.
    """
    tokens = np.asarray(tokens)
    n = len(tokens) - 1
    out = {"logprobs": np.empty(n, np.float32), "ranks": np.empty(n, np.int64),
           "top_ids": np.empty((n, TOP_K), np.int64), "top_probs": np.empty((n, TOP_K), np.float32)}
    for start, predictors in gpt2.scoring_windows(tokens, params, n_head, stride):
        for i in range(0, len(predictors), rows_at_once):
            rows = slice(start - 1 + i, min(start - 1 + i + rows_at_once, start - 1 + len(predictors)))  # in out's
            score_rows(predictors[i : i + rows_at_once], gpt2.head(**params), tokens[rows.start + 1 : rows.stop + 1],
                       {name: array[rows] for name, array in out.items()})
        if progress is not None:
            progress(start - 1 + len(predictors))
    return out


def score_rows(x: np.ndarray, head: np.ndarray, targets: np.ndarray, out: dict) -> None:  # [rows, E], [rows]
    """Fill out's views for these rows; the log-probability is gpt2.target_logprobs's, step for step."""
    logits = x @ head.T  # [rows, n_embd] -> [rows, n_vocab]
    log_total = gpt2.log_sum_exp(logits)  # [rows]
    target_logits = logits[np.arange(len(logits)), targets]
    out["logprobs"][:] = target_logits - log_total
    out["ranks"][:] = 1 + (logits > target_logits[:, None]).sum(axis=-1)
    top = np.argpartition(-logits, TOP_K, axis=-1)[:, :TOP_K]  # [rows, k], in no order
    top_logits = np.take_along_axis(logits, top, axis=-1)
    order = np.argsort(-top_logits, axis=-1, kind="stable")
    out["top_ids"][:] = np.take_along_axis(top, order, axis=-1)
    out["top_probs"][:] = np.exp(np.take_along_axis(top_logits, order, axis=-1) - log_total[:, None])
