"""Stop texts: generation ends where the continuation first contains one of them, as in OpenAI's
completions API (the stop text and everything after it are dropped).

Text arrives a token at a time, and a stop text may be split across tokens, or start in the
middle of one. StopWatcher takes the text as it comes and hands back what is safe to print: all of
it, except a tail that could still grow into a stop text, which it holds back until the next piece
settles the question.
"""
import re

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0"}
ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.?)", re.DOTALL)


def parse_escapes(text: str) -> str:
    """The option's text with its escapes replaced (\\n, \\t, \\r, \\0, \\\\, \\xHH, \\uHHHH,
    \\UHHHHHHHH); ValueError for any other backslash."""
    def replace(match: re.Match) -> str:
        escape = match[1]
        if escape in ESCAPES:
            return ESCAPES[escape]
        if len(escape) > 1:
            return chr(int(escape[1:], 16))
        raise ValueError(f"unknown escape \\{escape} in {text!r}: use \\n, \\t, \\r, \\0, \\\\, \\xHH or \\uHHHH")

    return ESCAPE.sub(replace, text)


class StopWatcher:
    """Cuts a stream of text at the first stop text."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.held = ""  # text not handed out yet: it may be the start of a stop text
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text so far that is safe to print (everything before a stop text, once one is seen)."""
        if self.stopped:
            return ""
        self.held += text
        found = [index for index in (self.held.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.stopped = True
            safe, self.held = self.held[: min(found)], ""
            return safe
        keep = self.longest_tail_that_starts_a_stop()
        safe, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return safe

    def finish(self) -> str:
        """What is still held back when the text ends without a stop text."""
        held, self.held = ("" if self.stopped else self.held), ""
        return held

    def longest_tail_that_starts_a_stop(self) -> int:
        for length in range(min(len(self.held), max(map(len, self.stops), default=1) - 1), 0, -1):
            tail = self.held[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(the text before the first stop text, whether there was one): StopWatcher on a whole text."""
    watcher = StopWatcher(stops)
    safe = watcher.feed(text)
    return (safe, True) if watcher.stopped else (safe + watcher.finish(), False)
