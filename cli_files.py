"""The files the command line reads and writes: texts to score, prompts files, and JSON Lines output
that an interrupted run can continue."""
import contextlib
import json
import os
import signal
import sys
import threading
from typing import BinaryIO, Iterator, NamedTuple

from errors import GPT2Error
from settings import Settings

JSONL_SUFFIXES = (".jsonl", ".ndjson")
RECORD_START = b'{"line": '  # every output record begins so: see completion_record


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
    settings: Settings  # the command line's, with a JSON Lines record's own settings in their place


def read_prompts(path: str, defaults: Settings) -> list[Prompt]:
    """The prompts of a file: one per line, or in a .jsonl file one JSON object per line with a
    "prompt" string and, optionally, its own settings under their names ("max_tokens", "temperature",
    "top_p", "top_k", "seed", "stop", the penalties), which win over the command line's `defaults`.
    Empty lines are skipped; every other line must be valid."""
    as_json = path.lower().endswith(JSONL_SUFFIXES)
    prompts = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        prompts.append(parse_json_prompt(line, path, number, defaults) if as_json else Prompt(number, line, defaults))
    if not prompts:
        raise GPT2Error(f"{path} has no prompts: write one prompt per line")
    return prompts


def parse_json_prompt(line: str, path: str, number: int, defaults: Settings) -> Prompt:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise GPT2Error(f"{path} line {number} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise GPT2Error(f'{path} line {number} has no "prompt" string: write {{"prompt": "your text"}}')
    return Prompt(number, record["prompt"], Settings.from_json(record, defaults, f"{path} line {number}: "))


def completion_record(line: int, prompt: str, completion: str, tokens: list[int]) -> bytes:
    """One line of JSON Lines output; RECORD_START relies on "line" coming first."""
    record = {"line": line, "prompt": prompt, "completion": completion, "tokens": tokens}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def count_finished_records(path: str, prompts: list[Prompt]) -> int:
    """How many prompts an earlier run with the same prompts already wrote to `path` (0 if no file).

    Each complete line must be the record of the prompt at that place, or we stop rather than mix
    two runs' results. A last line without its newline is a record cut off by an interrupted run:
    it is removed so the next record starts on a line of its own.
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
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if i >= len(prompts) or not isinstance(record, dict) or record.get("prompt") != prompts[i].text:
            raise GPT2Error(
                f"--output {path} line {i + 1} is not this run's record for prompt {i + 1}; "
                "use another --output (or the same arguments as the run that wrote it)"
            )
    if cut_off:
        if not cut_off.startswith(RECORD_START):
            raise GPT2Error(f"--output {path} ends with a line this tool did not write; use another --output")
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(cut_off))
    return len(lines)


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

