"""Scoring a corpus: a JSON Lines file of documents, each scored as `--score` scores one text.

Unlike `--score` of one text, many documents share each forward pass: short ones (up to n_ctx
tokens) are packed one after another into the rows of one pass, where gpt2.Batch keeps each one
attending over its own tokens only, so no row is padding. A longer document is windowed exactly as
`--score` windows it (gpt2.scoring_windows). Each document gives one record, in input order; one
that cannot be scored (not JSON, no text, too short) gives an error record and the job goes on.
"""
import json
import math
from typing import Any, Iterator, NamedTuple

import numpy as np

import gpt2
from cli_files import could_start_with, read_text
from errors import GPT2Error

PACK_TOKENS = 4096  # short documents' tokens per forward pass (bounds the activations' memory, ~50 MB for 124M)


class Document(NamedTuple):
    line: int  # its line number in the corpus file
    id: Any  # the record's "id" (a string or a number), or None
    text: str | None  # None: the record cannot be scored, and error says why
    error: str | None = None


def read_documents(path: str) -> list[Document]:
    """The documents of a JSON Lines file, one {"text": ..., "id": ...} per line; empty lines are skipped.
    A bad line becomes a Document with an error, so that it gets an error record in its place."""
    documents = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if line:
            documents.append(parse_document(line, number))
    if not documents:
        raise GPT2Error(f'{path} has no documents: write one {{"text": "...", "id": "..."}} per line')
    return documents


def parse_document(line: str, number: int) -> Document:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return Document(number, None, None, 'not valid JSON: write {"text": "...", "id": "..."}')
    if not isinstance(record, dict):
        return Document(number, None, None, 'not a JSON object: write {"text": "...", "id": "..."}')
    id_ = record.get("id")
    if isinstance(id_, bool) or not isinstance(id_, (str, int, float, type(None))):
        return Document(number, None, None, '"id" must be a string or a number: write {"text": "...", "id": "doc-1"}')
    text = record.get("text")
    if not isinstance(text, str):
        kind = type(text).__name__
        return Document(number, id_, None, f'"text" must be a string, not {kind}: write {{"text": "..."}}')
    if not text:
        return Document(number, id_, None, '"text" is empty: give it at least 2 tokens of text, or remove the line')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Document(number, id_, None, '"text" holds a lone surrogate: write the character itself')
    return Document(number, id_, text)


# ---------------------------------------------------------------- scoring


def summary(logprobs: np.ndarray, stride: int) -> dict:
    """--score --json's numbers for one text's token log-probabilities."""
    nll = -math.fsum(logprobs.tolist()) / len(logprobs)  # average negative log-likelihood, nats per token
    return {"n_tokens_scored": len(logprobs), "avg_nll": nll, "perplexity": math.exp(nll), "stride": stride}


def per_token(encoder: Any, tokens: list[int], logprobs: np.ndarray) -> list[dict]:
    """--score --json's tokens: a token holding part of a character's bytes shows U+FFFD in "text"; "token" is exact."""
    return [{"token": t, "text": encoder.decode([t]), "logprob": float(lp)} for t, lp in zip(tokens[1:], logprobs)]


def score_documents(documents: list[Document], encoder: Any, params: dict, n_head: int, stride: int,
                    with_tokens: bool) -> tuple[list[bytes], int]:
    """Each document's record, in order, and the number of tokens scored. Short documents are packed
    into passes of PACK_TOKENS tokens in their order, so the same documents always make the same
    passes (and the same float32 bits)."""
    n_ctx = params["wpe"].shape[0]
    encoded: list[list[int] | None] = [None if d.text is None else encoder.encode(d.text) for d in documents]
    logprobs: dict[int, np.ndarray] = {}
    pack: list[int] = []
    packed = 0  # the pack's tokens
    for i, tokens in enumerate(encoded):
        if tokens is None or len(tokens) < 2:
            continue
        if len(tokens) > n_ctx:
            logprobs[i] = gpt2.token_logprobs(tokens, params, n_head, stride)
            continue
        if packed + len(tokens) > PACK_TOKENS:
            logprobs.update(score_pack([encoded[j] for j in pack], pack, params, n_head))
            pack, packed = [], 0
        pack.append(i)
        packed += len(tokens)
    if pack:
        logprobs.update(score_pack([encoded[j] for j in pack], pack, params, n_head))
    records = []
    for i, (document, tokens) in enumerate(zip(documents, encoded)):
        if i in logprobs:
            fields = summary(logprobs[i], stride)
            if with_tokens:
                fields["tokens"] = per_token(encoder, tokens, logprobs[i])
            records.append(record(document, fields))
        elif document.error is not None:
            records.append(record(document, {"error": document.error}))
        else:
            error = f"the text has {len(tokens)} token: scoring needs at least 2, so give a longer text"
            records.append(record(document, {"error": error}))
    return records, sum(map(len, logprobs.values()))


def score_pack(texts: list[list[int]], indices: list[int], params: dict, n_head: int) -> Iterator[tuple]:
    """(index, log-probabilities) of each of a few short texts, all in one forward pass."""
    inputs = [token for tokens in texts for token in tokens]  # [N]
    x = gpt2.transformer(inputs, **params, n_head=n_head, batch=gpt2.Batch([len(t) for t in texts]))  # [N, n_embd]
    begin = 0
    for i, tokens in zip(indices, texts):
        rows = x[begin : begin + len(tokens) - 1]  # the rows that predict tokens 1 .. n - 1
        yield i, gpt2.target_logprobs(rows, gpt2.head(**params), np.asarray(tokens[1:]))
        begin += len(tokens)


# ---------------------------------------------------------------- records, and resuming


def record(document: Document, fields: dict) -> bytes:
    """One line of output; record_head relies on "line" and "id" coming first."""
    return (json.dumps({"line": document.line, "id": document.id, **fields}, ensure_ascii=False) + "\n").encode()


def record_head(document: Document) -> bytes:
    return record(document, {"n": 0})[: -len(b'"n": 0}\n')]


def is_record_of(line: bytes, document: Document) -> bool:
    """Whether `line` is a record this tool writes for this document: its line and id first, and
    exactly the bytes json.dumps gives for what it holds."""
    try:
        fields = json.loads(line)
        return line.startswith(record_head(document)) and line == record(document, {
            k: v for k, v in fields.items() if k not in ("line", "id")})
    except (ValueError, RecursionError, AttributeError):
        return False


def could_start_record_of(cut_off: bytes, document: Document) -> bool:
    """Whether `cut_off` (a last line without its newline) can be the start of this document's record."""
    return could_start_with(cut_off, record_head(document))
