"""OpenAI's legacy Completions API, field by field: a request body read into prompts and Settings,
and the engine's results written back as OpenAI's response objects and stream chunks.

It knows no HTTP: server.py serves it, and a batch job (OpenAI's Batch format, batch_api.py) reads the
same bodies and builds the same responses. A bad field raises ApiError, which carries OpenAI's error object
{"error": {"message", "type", "param", "code"}} and its HTTP status.
"""
import codecs
import time
import uuid
from typing import Any, NamedTuple

from settings import Settings, SettingsError

MAX_N = 128  # OpenAI's range for n (and best_of)
MAX_ROWS_PER_REQUEST = 256  # prompts x best_of: each is a row in the engine
MAX_STOPS = 4
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs", "echo",
          "stop", "presence_penalty", "frequency_penalty", "best_of", "logit_bias", "seed", "user", "suffix",
          "top_k", "repetition_penalty"}  # the last two are not OpenAI's: vLLM's and transformers' extensions
SETTING_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                  "logit_bias", "logprobs", "echo", "top_k", "repetition_penalty")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class CompletionRequest(NamedTuple):
    model: str
    prompts: list[list[int]]  # token ids of each prompt
    settings: Settings  # one row's settings (logprobs as the caller asked, None for none)
    n: int  # choices returned per prompt
    best_of: int  # rows generated per prompt, of which the n with the highest total logprob are returned
    stream: bool
    include_usage: bool


def parse_completion_request(body: object, model_id: str, encode: Any, n_vocab: int, n_ctx: int,
                             eot_token: int) -> CompletionRequest:
    """A /v1/completions body, checked field by field as OpenAI does (400 for a bad field, 404 for another model)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if body.get("suffix") is not None:
        raise ApiError(400, "suffix is not supported: GPT-2 only continues a text", "suffix")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "you must provide a model parameter", "model")
    if model != model_id:
        raise ApiError(404, f"The model '{model}' does not exist: this server serves '{model_id}'", "model",
                       "model_not_found")
    prompts = parse_prompts(body.get("prompt", "<|endoftext|>"), encode, n_vocab, eot_token)
    fields = {name: body[name] for name in SETTING_FIELDS if body.get(name) is not None}
    fields.setdefault("max_tokens", 16)
    fields.setdefault("temperature", 1.0)
    stop = fields.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} stop texts, not {len(stop)}", "stop")
    if isinstance(fields.get("logit_bias"), dict):
        fields["logit_bias"] = tuple(fields["logit_bias"].items())
    if isinstance(stop, list):
        fields["stop"] = tuple(stop)
    try:
        settings = Settings(**fields)
        settings.check_for_model(n_vocab, n_ctx)
    except SettingsError as e:
        raise ApiError(400, str(e), str(e).split(":", 1)[0].split("[", 1)[0]) from None
    n = whole_field(body, "n", 1, 1, MAX_N)
    best_of = whole_field(body, "best_of", n, 1, MAX_N)
    if best_of < n:
        raise ApiError(400, f"best_of ({best_of}) must be at least n ({n})", "best_of")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream: {stream!r} must be true or false", "stream")
    if stream and best_of > n:
        raise ApiError(400, "best_of cannot be streamed: its choices are known only at the end", "best_of")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be {\"include_usage\": true or false}", "stream_options")
    if len(prompts) * best_of > MAX_ROWS_PER_REQUEST:
        raise ApiError(400, f"{len(prompts)} prompts x {best_of} choices is more than the {MAX_ROWS_PER_REQUEST} "
                       "rows one request may ask for: send several requests", "n")
    for prompt in prompts:
        if len(prompt) + settings.max_tokens > n_ctx:
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens, but you requested "
                           f"{len(prompt) + settings.max_tokens} tokens ({len(prompt)} in the prompt, "
                           f"{settings.max_tokens} for the completion): shorten the prompt or max_tokens",
                           "max_tokens", "context_length_exceeded")
    return CompletionRequest(model, prompts, settings, n, best_of, stream, bool(options.get("include_usage")))


def whole_field(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise ApiError(400, f"{name}: {value!r} is out of range: use a whole number from {low} to {high}", name)
    return value


def parse_prompts(prompt: object, encode: Any, n_vocab: int, eot_token: int) -> list[list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    def ids(tokens: list) -> list[int]:
        if not tokens:
            raise ApiError(400, "a token prompt is empty: give at least one token id", "prompt")
        if not all(type(t) is int and 0 <= t < n_vocab for t in tokens):
            raise ApiError(400, f"prompt: token ids must be whole numbers from 0 to {n_vocab - 1}", "prompt")
        return list(tokens)

    def text(value: str) -> list[int]:
        try:
            return encode(value) or [eot_token]  # the empty prompt starts a new document, as on the command line
        except UnicodeEncodeError:
            raise ApiError(400, "prompt: a text holds a lone surrogate, which is not text", "prompt") from None

    if isinstance(prompt, str):
        return [text(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [text(p) for p in prompt]
        if all(type(t) is int for t in prompt):
            return [ids(prompt)]
        if all(isinstance(p, list) for p in prompt):
            return [ids(p) for p in prompt]
    raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                   "token ids", "prompt")


# ---------------------------------------------------------------- responses


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def token_text(decode_bytes: Any, token: int) -> str:
    """A token as OpenAI shows it: its text, or for bytes that are not whole characters "bytes:\\xNN..."."""
    data = decode_bytes([token])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)


def text_offsets(decode_bytes: Any, tokens: list[int], start: int = 0) -> list[int]:
    """Where each token's text starts, in characters: a token inside a character starts where it does."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, position = [], start
    for token in tokens:
        offsets.append(position)
        position += len(utf8.decode(decode_bytes([token])))
    return offsets


def top_dict(decode_bytes: Any, top: list[tuple[int, float]], k: int, token: int, logprob: float) -> dict:
    """The k most likely tokens and, as OpenAI's API always adds it, the chosen one (so up to k + 1)."""
    shown = {token_text(decode_bytes, t): lp for t, lp in top[: max(k, 1)]}  # the argmax is always there
    shown.setdefault(token_text(decode_bytes, token), logprob)
    return shown


def logprobs_object(decode_bytes: Any, tokens: list[int], logprobs: list[float | None],
                    tops: list[list[tuple[int, float]] | None], k: int, offset: int = 0) -> dict:
    return {
        "tokens": [token_text(decode_bytes, t) for t in tokens],
        "token_logprobs": logprobs,
        "top_logprobs": [None if top is None else top_dict(decode_bytes, top, k, t, lp)
                         for t, lp, top in zip(tokens, logprobs, tops)],
        "text_offset": text_offsets(decode_bytes, tokens, offset),
    }


def choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_object(id_: str, model: str, choices: list[dict], usage: dict | None,
                      created: int | None = None) -> dict:
    response = {"id": id_, "object": "text_completion", "created": created or int(time.time()), "model": model,
                "choices": choices}
    if usage is not None:
        response["usage"] = usage
    return response


def request_rows(parsed: CompletionRequest, default_seed: list | None = None) -> list[tuple]:
    """The engine rows of one request, (prompt, settings, seed, (prompt index, choice index)): best_of rows
    per prompt. A seeded request's row i draws from [seed, i], so its choices differ from one another and
    do not depend on the rows beside them; default_seed (a batch job's --seed and line) stands in for none."""
    settings = parsed.settings
    if parsed.best_of > parsed.n and settings.logprobs is None:
        settings = settings.with_changes(logprobs=0)  # best_of ranks rows by their total logprob
    base = default_seed if settings.seed is None else [settings.seed]
    rows = []
    for p, prompt in enumerate(parsed.prompts):
        for c in range(parsed.best_of):
            index = p * parsed.best_of + c
            rows.append((prompt, settings, None if base is None else [*base, index], (p, c)))
    return rows


def completion_response(rows: list, parsed: CompletionRequest, response_id: str, encoder: Any,
                        created: int | None = None) -> dict:
    """The whole response to one request from its finished engine rows (each tagged (prompt, choice)):
    the n best of each prompt's best_of rows by total logprob, in order, and the usage."""
    choices, n_generated = [], 0
    for p in range(len(parsed.prompts)):
        candidates = [row for row in rows if row.tag[-2] == p]
        n_generated += sum(len(row.continuation.tokens) for row in candidates)
        if parsed.best_of > parsed.n:
            candidates.sort(key=lambda row: -sum(row.continuation.logprobs))
        for row in candidates[: parsed.n]:
            choices.append(whole_choice(row, parsed, len(choices), encoder))
    usage = usage_object(sum(map(len, parsed.prompts)), n_generated)
    return completion_object(response_id, parsed.model, choices, usage, created)


def whole_choice(row: Any, parsed: CompletionRequest, index: int, encoder: Any) -> dict:
    settings, continuation = parsed.settings, row.continuation
    prompt_text = encoder.decode(row.prompt) if settings.echo else ""
    logprobs = None
    if settings.logprobs is not None:
        tokens, values, tops = continuation.tokens, continuation.logprobs, continuation.top
        if settings.echo:
            tokens = row.prompt + tokens
            values, tops = [None, *row.prompt_logprobs, *values], [None, *row.prompt_top, *tops]
        logprobs = logprobs_object(encoder.decode_bytes, tokens, values, tops, settings.logprobs)
    return choice(index, prompt_text + continuation.text, logprobs, continuation.finish_reason)


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
