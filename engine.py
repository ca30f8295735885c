"""The engine: the model, and the requests it is generating for, advanced together a step at a time.

Every front end runs on it: the command line (one prompt, or a prompts file), the server and batch
workers. A request can be submitted at any time; each step runs one forward pass over every active
request's new tokens (its next prompt chunk, or the token it chose last step), so that they share
each read of the weights, and then chooses one more token for each request whose prompt is in.
A request that has finished, or was cancelled, leaves at once, and the next waiting request takes
its place in the following step.

Each request keeps its own key/value cache (gpt2.KVCache), sized for its own prompt and max_tokens,
so memory grows with the tokens in flight, and each attends over its own keys only (gpt2.Batch).
While other requests are generating, a long prompt is run PREFILL_CHUNK tokens a step, so that they
keep getting tokens; alone, it runs in one pass. Past n_ctx, a request goes on from its last
context_keep tokens (as gpt2.generate_steps does for one prompt), computed anew at positions 0 ...
"""
import dataclasses
import queue
import threading
from typing import Callable, Iterator

import numpy as np

import gpt2
import sampling
from continuation import Continuation
from settings import Settings

# prompt tokens run per step while other requests are generating: measured at 124M with 7 rows generating
# (bench/engine_bench.py), 64-token chunks made their step 3.6x its usual time; 32 keeps it within 3x
PREFILL_CHUNK = 32
PASS_TOKENS = 4096  # prompt tokens run in one pass when none is generating (bounds the activations' memory)
LOGPROB_ROWS = 256  # the head runs on this many prompt positions at a time for echoed logprobs


@dataclasses.dataclass
class Event:
    """What one step did for one request."""
    token: int | None  # the chosen token (None: the request ended without choosing one)
    text: str  # the text this token settled ("" while a character or a possible stop text is incomplete)
    finish_reason: str | None = None  # set on the request's last event: "stop", "length", "cancelled" or "error"
    logprob: float | None = None  # log-probability of the token, if the request asked for logprobs
    top: list[tuple[int, float]] | None = None  # the most likely (token, logprob) pairs, if asked
    logits: np.ndarray | None = None  # the row the token was chosen from (after penalties): valid until the next step
    shifted: bool = False  # this token filled the context window: the request goes on from its last tokens


class Request:
    """One request in the engine: its prompt, settings and chooser, its continuation, its key/value
    cache, and the tokens still to run before it can choose its next token."""

    def __init__(self, prompt: list[int], settings: Settings, seed: object, continuation: Continuation,
                 on_event: Callable[["Request", Event], None] | None = None, tag: object = None):
        self.prompt, self.settings, self.continuation, self.on_event, self.tag = prompt, settings, continuation, \
            on_event, tag
        self.pick = sampling.picker_for(settings, seed, prompt)
        self.window = list(prompt)  # the tokens the model sees, for going on past n_ctx
        self.pending = list(prompt)  # tokens not yet in the cache
        self.cache: gpt2.KVCache | None = None  # made when the request starts running
        self.prompt_logprobs: list[float] = []  # with echo and logprobs: of prompt tokens 1 .. n-1
        self.prompt_top: list[list[tuple[int, float]]] = []
        self.in_prompt = True  # until its first token is chosen
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self.continuation.done

    @property
    def echo_logprobs(self) -> bool:
        return self.settings.echo and self.settings.logprobs is not None

    def cancel(self) -> None:
        """Leave at the next step (safe from any thread)."""
        self.cancelled = True


class Engine:
    def __init__(self, params: dict, n_head: int, eot_token: int | None, decode_bytes: Callable[[list[int]], bytes],
                 max_rows: int = 8, prefill_chunk: int = PREFILL_CHUNK):
        self.params, self.n_head, self.eot_token, self.decode_bytes = params, n_head, eot_token, decode_bytes
        self.n_ctx, self.n_vocab = params["wpe"].shape[0], params["wte"].shape[0]
        self.max_rows, self.prefill_chunk = max_rows, prefill_chunk
        self.head_t = gpt2.head(**params).T  # [n_embd, n_vocab], a view
        self.waiting: queue.SimpleQueue[Request] = queue.SimpleQueue()  # submitted from any thread
        self.running: list[Request] = []
        self.wakeup = threading.Event()  # set when a request is submitted

    # ---------------------------------------------------------------- requests in

    def submit(self, prompt: list[int], settings: Settings, seed: object = None, on_event: Callable | None = None,
               tag: object = None) -> Request:
        """Queue a request (from any thread); it starts at the next step with a free row. seed: what seeds its
        sampling (default settings.seed). The prompt must fit the context; generation may go past it."""
        gpt2.check_context(len(prompt), self.n_ctx)
        settings.check_for_model(self.n_vocab, self.n_ctx)
        request = Request(list(prompt), settings, settings.seed if seed is None else seed,
                          Continuation(self.decode_bytes, self.eot_token, settings), on_event, tag)
        self.waiting.put(request)
        self.wakeup.set()
        return request

    @property
    def busy(self) -> bool:
        return bool(self.running) or not self.waiting.empty()

    def admit(self) -> None:
        self.running = [request for request in self.running if not request.cancelled]
        while len(self.running) < self.max_rows and not self.waiting.empty():
            request = self.waiting.get()
            if request.settings.max_tokens == 0 and not request.echo_logprobs:
                request.continuation.finish_reason = "length"  # nothing to compute: it ends in this step
            if not request.cancelled:
                self.running.append(request)

    # ---------------------------------------------------------------- one step

    def step(self) -> list[tuple[Request, Event]]:
        """One forward pass over every running request's next tokens; one token for each that is ready."""
        events = [(request, Event(None, request.continuation.finish("cancelled"), "cancelled"))
                  for request in self.running if request.cancelled]
        self.admit()
        ending = [request for request in self.running if request.done]  # max_tokens 0: nothing to generate
        chunks = self.schedule()
        if chunks:
            x, ends = self.forward(chunks)  # [R, n_embd], and where each chunk's last row is in it
            ready = [(request, end) for (request, _), end in zip(chunks, ends) if not request.pending]
            for request, _ in ready:
                if request.done:  # echo with max_tokens 0: the prompt's logprobs were all it wanted
                    ending.append(request)
            ready = [(request, end) for request, end in ready if not request.done]
            if ready:
                logits = x[[end for _, end in ready]] @ self.head_t  # [n_ready, n_embd] -> [n_ready, n_vocab]
                for (request, _), row in zip(ready, logits):
                    events.append((request, self.choose(request, row)))
        for request in ending:
            events.append((request, Event(None, "", request.continuation.finish_reason)))
        self.running = [request for request in self.running if not request.done]
        for request, event in events:
            if event.finish_reason is not None:
                request.cache = None  # its memory goes back at once
            if request.on_event is not None:
                request.on_event(request, event)
        return events

    def schedule(self) -> list[tuple[Request, list[int]]]:
        """Each running request's tokens for this pass: its chosen token, or its next prompt chunk. Prompt
        chunks are bounded while others are generating, so that a long prompt does not hold them up."""
        generating = any(len(request.pending) <= 1 for request in self.running if not request.done)
        budget = self.prefill_chunk if generating else PASS_TOKENS
        chunks = []
        for request in self.running:
            if request.done:
                continue
            n = len(request.pending)
            if n > 1:
                n = min(n, budget)
                budget -= n
                if n == 0:
                    continue
            if request.cache is None:
                capacity = min(self.n_ctx, len(request.prompt) + request.settings.max_tokens)
                request.cache = gpt2.KVCache(self.params, self.n_head, max(capacity, len(request.prompt)))
            chunks.append((request, request.pending[:n]))
        return chunks

    def forward(self, chunks: list[tuple[Request, list[int]]]) -> tuple[np.ndarray, list[int]]:  # -> [R, n_embd]
        """One pass over the chunks; the hidden states of only the rows this step reads (each chunk's last,
        and every row of an echoed prompt's chunk), and where each chunk's last row is among them."""
        echoed = [request.echo_logprobs and request.in_prompt for request, _ in chunks]  # these need every row
        wanted, ends, begin = [], [], 0
        for (_, tokens), every_row in zip(chunks, echoed):
            wanted += range(begin, begin + len(tokens)) if every_row else [begin + len(tokens) - 1]
            ends.append(len(wanted) - 1)
            begin += len(tokens)
        batch = gpt2.Batch([len(tokens) for _, tokens in chunks], [request.cache for request, _ in chunks],
                           outputs=wanted)
        inputs = [token for _, tokens in chunks for token in tokens]  # [N]
        x = gpt2.transformer(inputs, **self.params, n_head=self.n_head, batch=batch)  # [N] -> [R, n_embd]
        for (request, tokens), end, every_row in zip(chunks, ends, echoed):
            if every_row:
                self.add_prompt_logprobs(request, x[end + 1 - len(tokens) : end + 1], len(tokens))
            request.pending = request.pending[len(tokens) :]
        return x, ends

    def add_prompt_logprobs(self, request: Request, x: np.ndarray, n: int) -> None:  # [n, n_embd]
        """The log-probability of each prompt token after the first (and the top alternatives), as --score
        computes them, from the rows of the prompt chunk just run."""
        done = len(request.prompt) - len(request.pending)  # prompt tokens run before this chunk
        targets = request.prompt[done + 1 : done + n + 1]  # what each row predicts (the last row: a new token)
        rows = x[: len(targets)]
        k = max(request.settings.logprobs, 1)  # the argmax is always among the alternatives
        for i in range(0, len(targets), LOGPROB_ROWS):
            logits = rows[i : i + LOGPROB_ROWS] @ self.head_t  # [rows, n_embd] -> [rows, n_vocab]
            logprobs = log_softmax(logits)
            picked = logprobs[np.arange(len(logits)), targets[i : i + LOGPROB_ROWS]]
            request.prompt_logprobs += picked.tolist()
            request.prompt_top += [top_logprobs(row, k) for row in logprobs]
        if done + n == len(request.prompt) and request.settings.max_tokens == 0:
            request.continuation.finish_reason = "length"

    def choose(self, request: Request, logits: np.ndarray) -> Event:
        """Choose the request's next token from its row of logits; keep it, and say what it settled."""
        request.in_prompt = False
        token = int(request.pick(logits))  # penalties and logit bias are applied to the row, in place
        logprob = top = None
        if request.settings.logprobs is not None:
            logprobs = log_softmax(logits[None])[0]
            logprob, top = float(logprobs[token]), top_logprobs(logprobs, max(request.settings.logprobs, 1))
        text = request.continuation.add(token, logprob, top)
        event = Event(token, text, request.continuation.finish_reason, logprob, top, logits)
        if not request.done:
            request.window.append(token)
            request.pending = [token]
            if request.cache.length == self.n_ctx:  # the next position would be n_ctx
                keep = request.settings.context_keep or self.n_ctx // 2
                request.window = request.pending = request.window[-keep:]
                request.cache.length = 0
                event.shifted = True
        return event

    def fail_all(self) -> list[tuple[Request, Event]]:
        """End every request, running or waiting, with finish reason "error" (after a step failed)."""
        failed = list(self.running)
        while not self.waiting.empty():
            failed.append(self.waiting.get())
        self.running = []
        events = []
        for request in failed:
            request.continuation.finish_reason, request.cache = "error", None
            events.append((request, Event(None, "", "error")))
            if request.on_event is not None:
                request.on_event(request, events[-1][1])
        return events

    # ---------------------------------------------------------------- running to the end

    def run(self) -> Iterator[tuple[Request, Event]]:
        """Step until no request is running or waiting, yielding every event."""
        while self.busy:
            yield from self.step()


def log_softmax(logits: np.ndarray) -> np.ndarray:  # [rows, n_vocab] -> [rows, n_vocab]
    """log p of every token, as gpt2.target_logprobs computes them (so --score's numbers), in float32."""
    return logits - gpt2.log_sum_exp(logits)[:, None]


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:  # [n_vocab] -> k pairs
    """The k most likely tokens and their logprobs, most likely first (ties: the lower id first)."""
    if k == 0:
        return []
    top = np.argpartition(-logprobs, k - 1)[:k] if k < len(logprobs) else np.arange(len(logprobs))
    top = top[np.lexsort((top, -logprobs[top]))]
    return [(int(t), float(logprobs[t])) for t in top]
