"""The files the command line reads and writes: texts to score, prompts files, and JSON Lines output
that an interrupted run can continue."""
import contextlib
import json
import os
import signal
import sys
import threading
from typing import BinaryIO, Iterator, NamedTuple

import regex  # unlike the standard `re`, it matches partially: see could_start_record_of

from errors import GPT2Error

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_text(path: str) -> str:
    """The UTF-8 text of a file, or of standard input for "-"."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise GPT2Error(f"cannot read {name}: {e.strerror}; check the path") from None
    except UnicodeDecodeError as e:
        raise GPT2Error(f"{name} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


class Prompt(NamedTuple):
    line: int  # its line number in the prompts file
    text: str
    stop: list[str] | None  # a JSON Lines record's own "stop" list; None: the command line's --stop


def read_prompts(path: str) -> list[Prompt]:
    """The prompts of a file: one per line, or in a .jsonl file one JSON object per line with a
    "prompt" string and, optionally, a "stop" list. Empty lines are skipped; every other line must be valid."""
    as_json = path.lower().endswith(JSONL_SUFFIXES)
    prompts = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        prompts.append(parse_json_prompt(line, path, number) if as_json else Prompt(number, line, None))
    if not prompts:
        raise GPT2Error(f"{path} has no prompts: write one prompt per line")
    return prompts


def parse_json_prompt(line: str, path: str, number: int) -> Prompt:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise GPT2Error(f"{path} line {number} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise GPT2Error(f'{path} line {number} has no "prompt" string: write {{"prompt": "your text"}}')
    stop = record.get("stop")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise GPT2Error(f'{path} line {number}: "stop" must be a list of non-empty strings, e.g. ["\\n\\n", "END"]')
    return Prompt(number, record["prompt"], stop)


def completion_record(line: int, prompt: str, completion: str, tokens: list[int]) -> bytes:
    """One line of JSON Lines output; could_start_record_of relies on the order of its fields."""
    record = {"line": line, "prompt": prompt, "completion": completion, "tokens": tokens}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def count_finished_records(path: str, prompts: list[Prompt]) -> int:
    """How many prompts an earlier run with the same prompts already wrote to `path` (0 if no file).

    Each complete line must be, byte for byte, this run's record of the prompt at that place, or we
    stop rather than mix two runs' results. A last line without its newline is a record cut off by
    an interrupted run: it is removed so the next record starts on a line of its own, but only if it
    is the start of the next prompt's record, since only bytes this tool wrote may ever be cut.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise GPT2Error(f"cannot read --output {path}: {e.strerror}") from None
    complete, _, cut_off = data.rpartition(b"\n")
    lines = complete.split(b"\n") if complete or data.startswith(b"\n") else []
    for i, line in enumerate(lines):
        if i >= len(prompts) or not is_record_of(line + b"\n", prompts[i]):
            raise GPT2Error(
                f"--output {path} line {i + 1} is not this run's record for prompt {i + 1}; "
                "use another --output (or the same arguments as the run that wrote it)"
            )
    if cut_off:
        if len(lines) >= len(prompts) or not could_start_record_of(cut_off, prompts[len(lines)]):
            raise GPT2Error(f"--output {path} ends with a line this tool did not write; use another --output")
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(cut_off))
    return len(lines)


def is_record_of(line: bytes, prompt: Prompt) -> bool:
    """Whether `line` is exactly what completion_record writes for this prompt."""
    try:
        record = json.loads(line)
        return line == completion_record(prompt.line, prompt.text, record["completion"], record["tokens"])
    except (ValueError, RecursionError, TypeError, KeyError):  # not JSON, too deep, not a record
        return False


def could_start_record_of(cut_off: bytes, prompt: Prompt) -> bool:
    """Whether `cut_off` is the start of some record completion_record could write for this prompt:
    its own "line" and "prompt", then any JSON string and token list (a partial regex match)."""
    head = completion_record(prompt.line, prompt.text, "", [])[: -len(b'", "tokens": []}\n')]
    string_rest = rb'(?:[^"\\\n]|\\["\\/bfnrt]|\\u[0-9a-f]{4})*"'  # JSON's escapes, as json.dumps writes them
    tokens = rb', "tokens": \[(?:[0-9]+(?:, [0-9]+)*)?\]\}\n'
    return regex.fullmatch(regex.escape(head) + string_rest + tokens, cut_off, partial=True) is not None


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits until the block is done; it is delivered, as KeyboardInterrupt, right after."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def append_records(out: BinaryIO, records: bytes, durable: bool) -> None:
    """Write whole records: an interrupt cannot cut one in half, and with durable (a file, not a
    pipe) they are on disk before the next batch starts, so a crash or power cut keeps them."""
    with interrupts_held():
        out.write(records)
        out.flush()
        if durable:
            os.fsync(out.fileno())

