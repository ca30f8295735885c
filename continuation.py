"""One request's continuation, a token at a time: its tokens, the text that is safe to show, each
token's log-probability (and the most likely alternatives, when asked), and why it ended.

Text is handed out as soon as it is settled: a character whose UTF-8 bytes span several tokens
waits for its last byte, and a tail that could still grow into a stop text waits until the next
token decides (stop_text.py). A continuation ends at end of text, at a stop text (finish reason
"stop") or after max_tokens tokens ("length"); the command line, the server and batch jobs all read
the same record of it.
"""
import codecs
from typing import Callable

from settings import Settings
from stop_text import StopWatcher


class Continuation:
    def __init__(self, decode_bytes: Callable[[list[int]], bytes], eot_token: int | None, settings: Settings):
        self.decode_bytes = decode_bytes
        self.eot_token = None if settings.ignore_eos else eot_token
        self.max_tokens = settings.max_tokens
        self.tokens: list[int] = []  # generated, up to and including one that completed a stop text
        self.logprobs: list[float] = []  # of each token in `tokens`, when the request asked for logprobs
        self.top: list[list[tuple[int, float]]] = []  # each step's most likely (token, logprob), when asked
        self.text = ""  # the text handed out so far
        self.finish_reason: str | None = None  # "stop", "length", or "cancelled"
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds back a split character
        self.watcher = StopWatcher(list(settings.stop))

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int, logprob: float | None = None, top: list[tuple[int, float]] | None = None) -> str:
        """Take the next token; return the text it settles ("" while a character or a possible stop
        text is incomplete). End of text is not kept; a token that completes a stop text is."""
        if token == self.eot_token:
            return self.finish("stop")
        self.tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
            self.top.append(top or [])
        piece = self.watcher.feed(self.utf8.decode(self.decode_bytes([token])))
        self.text += piece
        if self.watcher.stopped:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_tokens:
            piece += self.finish("length")
        return piece

    def finish(self, reason: str) -> str:
        """End here; the held-back text, if it was no stop text (a character cut off at the end: U+FFFD)."""
        rest = self.watcher.feed(self.utf8.decode(b"", final=True)) + self.watcher.finish()
        self.text += rest
        self.finish_reason = reason
        return rest
