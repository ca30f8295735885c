"""The files the command line reads and writes: texts to score, prompts files, and JSON Lines output
that an interrupted run can continue."""
import contextlib
import fcntl
import json
import math
import os
import signal
import stat
import sys
import threading
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, NamedTuple

import regex  # unlike the standard `re`, it matches partially: see could_start_record_of

from encoder import SPLIT_PATTERN
from errors import ContextError, GPT2Error
from settings import Settings

if TYPE_CHECKING:
    from encoder import Encoder

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_text(path: str) -> str:
    """The UTF-8 text of a file, or of standard input for "-"."""
    name = "standard input" if path == "-" else path
    if path == "-" and sys.stdin is None:  # Python's stdin when its descriptor was closed (<&-)
        raise GPT2Error("standard input is closed: give the text with < FILE, or its path instead of -")
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
    except RecursionError:
        raise GPT2Error(f"{path} line {number} nests its JSON too deeply to be a prompt's record") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise GPT2Error(f'{path} line {number} has no "prompt" string: write {{"prompt": "your text"}}')
    try:
        record["prompt"].encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's \ud800 escapes a lone surrogate, which no UTF-8 text holds
        raise GPT2Error(f"{path} line {number} holds a lone surrogate ({record['prompt'][e.start]!r}), which is not "
                        "text: write the character itself, or both halves of its surrogate pair") from None
    return Prompt(number, record["prompt"], Settings.from_json(record, defaults, f"{path} line {number}: "))


def check_prompts_fit(encoder: "Encoder", prompts: list[Prompt], n_ctx: int, path: str | None) -> None:
    """Refuse, before tokenizing, a prompt that has more than n_ctx tokens for certain, so that a
    huge prompt is not tokenized in full (5 MB took 22 s) only to be refused.

    A token holds at most the longest vocabulary entry's bytes, and every pre-tokenizer word (and
    each added token) is at least one token: so each word has at least len(bytes) / longest tokens.
    The words are counted lazily, stopping as soon as their bound exceeds n_ctx."""
    longest = max(max(map(len, encoder.encoder)), *(len(text.encode("utf-8")) for text in encoder.added))
    for prompt in prompts:
        if len(prompt.text) > n_ctx * longest or lower_bound_of_tokens(encoder, prompt.text, longest, n_ctx) > n_ctx:
            where = "the prompt" if path is None else f"{path} line {prompt.line}: the prompt"
            raise ContextError(f"{where} has more tokens than the model's context of {n_ctx} tokens: shorten it "
                               "(it is never cut silently)")


def lower_bound_of_tokens(encoder: "Encoder", text: str, longest: int, limit: int) -> int:
    """At least how many tokens encoder.encode(text) gives; counting stops once above limit."""
    bound, start = 0, 0
    for match in [*encoder.added_pattern.finditer(text), None]:
        for word in SPLIT_PATTERN.finditer(text, start, len(text) if match is None else match.start()):
            bound += math.ceil(len(word[0].encode("utf-8")) / longest)
            if bound > limit:
                return bound
        if match is not None:
            bound, start = bound + 1, match.end()
    return bound


def completion_record(line: int, prompt: str, completion: str, tokens: list[int]) -> bytes:
    """One line of JSON Lines output; could_start_record_of relies on the order of its fields."""
    record = {"line": line, "prompt": prompt, "completion": completion, "tokens": tokens}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def count_finished_records(path: str, prompts: list, is_record: Callable[[bytes, Any], bool] | None = None,
                           could_start: Callable[[bytes, Any], bool] | None = None) -> int:
    """How many prompts an earlier run with the same prompts already wrote to `path` (0 if no file).
    (Other inputs, such as a corpus's documents, bring their own is_record and could_start checks.)

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
    is_record, could_start = is_record or is_record_of, could_start or could_start_record_of
    complete, _, cut_off = data.rpartition(b"\n")
    lines = complete.split(b"\n") if complete or data.startswith(b"\n") else []
    for i, line in enumerate(lines):
        if i >= len(prompts) or not is_record(line + b"\n", prompts[i]):
            raise GPT2Error(
                f"--output {path} line {i + 1} is not this run's record for prompt {i + 1}; "
                "use another --output (or the same arguments as the run that wrote it)"
            )
    if cut_off:
        if len(lines) >= len(prompts) or not could_start(cut_off, prompts[len(lines)]):
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


def could_start_with(cut_off: bytes, head: bytes) -> bool:
    """Whether a last line without its newline can be the start of a record that begins with `head`
    (a record whose fields after its head may hold anything JSON can)."""
    return b"\n" not in cut_off and (cut_off.startswith(head) or head.startswith(cut_off))


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
    pipe) they are on disk before the next batch starts, so a crash or power cut keeps them. A full
    disk can cut the batch's last record: the next run removes it, as it does an interrupted one."""
    with interrupts_held():
        try:
            out.write(records)  # an --output file is unbuffered: a failed write leaves nothing to retry at close
            out.flush()
            if durable:
                os.fsync(out.fileno())
        except OSError as e:
            if out is getattr(sys.stdout, "buffer", None):
                raise GPT2Error(f"cannot write standard output: {e.strerror}") from None
            raise GPT2Error(f"cannot write --output {out.name}: {e.strerror}; the records before stay, and "
                            "running again continues once it can be written") from None


def check_output_target(path: str) -> None:
    """--output must be a regular file or not exist yet in an existing folder: a FIFO, a device, a
    folder or a dangling symlink is refused before any work (a FIFO would block, /dev/zero never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise GPT2Error(f"--output {path} is a symlink to {os.readlink(path)}, which does not exist; "
                            "give a file's own path") from None
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise GPT2Error(f"--output {path}: the folder {folder} does not exist; create it or check the path") \
                from None
        return
    except OSError as e:  # a file in the path's place of a folder, a symlink loop, no permission
        raise GPT2Error(f"cannot use --output {path}: {e.strerror}; check the path") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise GPT2Error(f"--output {path} is {kind}, not a regular file; give a file's path")


@contextlib.contextmanager
def opened_output(path: str | None) -> Iterator[BinaryIO]:
    """--output PATH, checked, opened for appending and locked before any work; or standard output.

    The lock is an flock(2) on the output file itself: a second run on the same file fails at once
    (it could only repeat the first run's records or refuse them), and the kernel releases the lock
    when its holder exits, even by kill -9. filelock would need a lock file beside the output, left
    behind in the user's folder. A file this run created and wrote nothing to is removed on failure."""
    if path is None:
        yield sys.stdout.buffer
        return
    check_output_target(path)
    existed = os.path.lexists(path)
    try:  # O_NONBLOCK: should a FIFO take the file's place after the check, opening it does not block
        out = open(path, "ab", buffering=0, opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    except OSError as e:  # a read-only file or file system, no permission
        raise GPT2Error(f"cannot write --output {path}: {e.strerror}") from None
    with out:
        if not stat.S_ISREG(os.fstat(out.fileno()).st_mode):
            raise GPT2Error(f"--output {path} is not a regular file; give a file's path")
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GPT2Error(f"--output {path} is being written by another run: let it finish (running "
                            "the same command afterwards continues it), or use another --output") from None
        if not os.path.samestat(os.fstat(out.fileno()), os.stat(path)):  # replaced while we opened it
            raise GPT2Error(f"--output {path} was replaced while this run opened it; run again")
        try:
            yield out
        except BaseException:
            if not existed and os.fstat(out.fileno()).st_size == 0:
                os.unlink(path)
            raise


def check_standard_streams(needs_stdout: bool) -> None:
    """Python sets sys.stdout or sys.stderr to None when its descriptor was closed at the start (>&-).
    A run that prints its results refuses a closed stdout; otherwise a closed stream becomes
    /dev/null (print(file=None) would otherwise write stderr's messages to stdout)."""
    if sys.stdout is None and needs_stdout:
        raise GPT2Error("standard output is closed: send it to a file (> out.txt), or to > /dev/null")
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # open until the process exits


def silence_stdout() -> None:
    """After standard output failed (a full disk, /dev/full): send what is still buffered to
    /dev/null, so that Python's flush at exit does not print a second error with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (in tests), or already closed
        pass
