"""OpenAI's Batch API format for `--prompts_file batch.jsonl`: a line per request,
{"custom_id", "method": "POST", "url": "/v1/completions", "body": {...}}, and a line per response,
{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}, in input order.

Unlike a plain JSON Lines prompts file, each body is a whole completions request, read by the same
code as the server's (openai_api.py), so a Batch line and a server request are one schema. The
body's "model" is copied into its response, whatever it names: the job runs on the command line's
model, so a file written for OpenAI runs unchanged. A line that is not a request gets an error
record (`"error": {"code", "message"}`); a request that the server would refuse gets the server's
response (`"status_code": 400` and OpenAI's error object); neither stops the job.

A record's ids come from a digest of its input line, and "created" is the input file's modification
time, so that running the same file again writes the same bytes, which resuming relies on.
"""
import hashlib
import json
from typing import Any, NamedTuple

import openai_api
from cli_files import could_start_with, read_text
from openai_api import ApiError

URL = "/v1/completions"


class BatchLine(NamedTuple):
    line: int  # its line number in the file
    digest: str  # of the line's text: the record's ids
    custom_id: Any  # None when the line has none
    body: Any
    error: str | None = None  # why the line is not a request (a message that says what to write)


def read_batch_lines(path: str) -> list[BatchLine] | None:
    """The requests of a Batch input file, or None if the file is not one: its first line that is
    not empty must be a JSON object with a "custom_id" (every other line may be bad: it gets an error record)."""
    lines = [(number, line.removesuffix("\r")) for number, line in enumerate(read_text(path).split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines or not looks_like_a_batch_line(lines[0][1]):
        return None
    return [parse_line(line, number) for number, line in lines]


def looks_like_a_batch_line(line: str) -> bool:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and "custom_id" in record


def parse_line(line: str, number: int) -> BatchLine:
    digest = hashlib.sha256(f"{number}\n{line}".encode("utf-8")).hexdigest()[:24]
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return BatchLine(number, digest, None, None, "this line is not valid JSON: write one request object per line")
    if not isinstance(record, dict):
        return BatchLine(number, digest, None, None, 'write {"custom_id", "method", "url", "body"} on each line')
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str):
        return BatchLine(number, digest, None, None, '"custom_id" must be a string: give each request its own')
    if record.get("method") != "POST":
        return BatchLine(number, digest, custom_id, None, f'"method" must be "POST", not {record.get("method")!r}')
    if record.get("url") != URL:
        return BatchLine(number, digest, custom_id, None,
                         f'"url" must be "{URL}" (the only endpoint here), not {record.get("url")!r}')
    if not isinstance(record.get("body"), dict):
        return BatchLine(number, digest, custom_id, None, '"body" must be a completions request object')
    return BatchLine(number, digest, custom_id, record["body"])


# ---------------------------------------------------------------- running a chunk of lines


def run_lines(engine: Any, model: Any, lines: list[BatchLine], options: dict) -> tuple[list[bytes], int]:
    """Every line's record, all its requests' rows run together on one engine; and the tokens generated."""
    encoder, hparams = model.encoder, model.hparams
    parsed: dict[int, openai_api.CompletionRequest] = {}
    failed: dict[int, ApiError] = {}
    rows: dict[int, list] = {}
    for i, line in enumerate(lines):
        if line.error is not None:
            continue
        try:
            request = parse_body(line.body, encoder, hparams)
        except ApiError as e:
            failed[i] = e
            continue
        parsed[i] = request
        default_seed = None if options["seed"] is None else [options["seed"], line.line]
        rows[i] = [engine.submit(prompt, settings, seed, tag=(i, *tag))
                   for prompt, settings, seed, tag in openai_api.request_rows(request, default_seed)]
    for _ in engine.run():
        pass
    records = []
    for i, line in enumerate(lines):
        if i in parsed:
            body = openai_api.completion_response(rows[i], parsed[i], f"cmpl-{line.digest}", encoder,
                                                  options["created"])
            records.append(output_record(line, {"status_code": 200, "request_id": f"req_{line.digest}", "body": body}))
        elif i in failed:
            response = {"status_code": failed[i].status, "request_id": f"req_{line.digest}", "body": failed[i].body()}
            records.append(output_record(line, response))
        else:
            code = "invalid_json_line" if line.custom_id is None and "JSON" in line.error else "invalid_request"
            records.append(output_record(line, None, {"code": code, "message": f"line {line.line}: {line.error}"}))
    return records, sum(len(row.continuation.tokens) for line_rows in rows.values() for row in line_rows)


def parse_body(body: dict, encoder: Any, hparams: dict) -> openai_api.CompletionRequest:
    """The server's reading of a completions body, for whatever model it names; a stream cannot be a batch line."""
    model = body.get("model")
    request = openai_api.parse_completion_request(body, model if isinstance(model, str) else "", encoder.encode,
                                                  hparams["n_vocab"], hparams["n_ctx"], encoder.eot_token)
    if request.stream:
        raise ApiError(400, "stream is not supported in a batch: remove it (each response is written whole)", "stream")
    return request


# ---------------------------------------------------------------- records, and resuming


def output_record(line: BatchLine, response: dict | None, error: dict | None = None) -> bytes:
    """One output line; record_head relies on "id" and "custom_id" coming first."""
    record = {"id": f"batch_req_{line.digest}", "custom_id": line.custom_id, "response": response, "error": error}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def record_head(line: BatchLine) -> bytes:
    return output_record(line, None)[: -len(b'"response": null, "error": null}\n')]


def is_record_of(data: bytes, line: BatchLine) -> bool:
    """Whether `data` is a record this tool writes for this input line: its own ids first, and exactly
    the bytes json.dumps gives for what it holds."""
    try:
        fields = json.loads(data)
        return data.startswith(record_head(line)) and data == output_record(line, fields["response"], fields["error"])
    except (ValueError, RecursionError, TypeError, KeyError):
        return False


def could_start_record_of(cut_off: bytes, line: BatchLine) -> bool:
    return could_start_with(cut_off, record_head(line))
