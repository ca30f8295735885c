"""`python gpt2.py --serve`: an OpenAI-compatible completions server, with a playground at `/`.

FastAPI and uvicorn serve it; the engine (engine.py) runs in a thread of its own, so request
handlers never run the model: they check a request (openai_api.py), submit its rows to the engine,
and wait for the rows' events, which the engine thread hands over to the event loop. Requests that
arrive together share each forward pass (continuous batching); a client that goes away cancels
its rows, which leave the batch at the next step.
"""
import asyncio
import hmac
import json
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import openai_api
import playground
from engine import Engine, Event
from engine import Request as Row
from openai_api import ApiError

MAX_BODY_BYTES = 2 * 2**20  # a request body: a few prompts of token ids fit many times over
DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting non-streaming request checks that its client is still there
RETRY_AFTER_SECONDS = 1


class EngineThread:
    """The engine and the thread that steps it while it has work: the only place the model runs."""

    def __init__(self, engine: Engine, metrics: "Metrics"):
        self.engine, self.metrics = engine, metrics
        self.stopping = False
        self.thread = threading.Thread(target=self.loop, name="engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def loop(self) -> None:
        while not self.stopping:
            if not self.engine.busy:
                self.engine.wakeup.wait(0.5)
                self.engine.wakeup.clear()
                continue
            started = time.perf_counter()
            try:
                events = self.engine.step()
            except Exception as e:  # noqa: BLE001 (the requests in flight get a 500; the server goes on)
                print(f"gpt2.py: error: a step failed ({type(e).__name__}: {e}); its requests get an error",
                      file=sys.stderr, flush=True)
                events = self.engine.fail_all()
            self.metrics.step(time.perf_counter() - started, len(self.engine.running), self.engine.waiting.qsize(),
                              sum(event.token is not None for _, event in events))

    def stop(self) -> None:
        """Cancel what is left and let the thread end."""
        for row in list(self.engine.running):
            row.cancel()
        self.stopping = True
        self.engine.wakeup.set()
        self.thread.join(timeout=5)


class Metrics:
    """Prometheus metrics in a registry of the app's own (so that tests can run several apps)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("gpt2_requests", "completion requests, by HTTP status", ["status"],
                                registry=self.registry)
        self.tokens_in = Counter("gpt2_prompt_tokens", "prompt tokens of completion requests", registry=self.registry)
        self.tokens_out = Counter("gpt2_generated_tokens", "tokens generated", registry=self.registry)
        self.rows = Gauge("gpt2_rows_in_flight", "rows the engine is running", registry=self.registry)
        self.queue = Gauge("gpt2_queue_depth", "rows waiting for a place in the engine", registry=self.registry)
        self.step_seconds = Histogram("gpt2_step_seconds", "time of one engine step (one forward pass)",
                                      buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=self.registry)

    def step(self, seconds: float, rows: int, waiting: int, new_tokens: int) -> None:
        self.step_seconds.observe(seconds)
        self.rows.set(rows)
        self.queue.set(waiting)
        self.tokens_out.inc(new_tokens)


class Rows:
    """The engine rows of one HTTP request, and the events they send back to the event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop):
        self.engine, self.loop = engine, loop
        self.events: asyncio.Queue[tuple[Row, Event]] = asyncio.Queue()
        self.rows: list[Row] = []
        self.finished: set[Row] = set()  # rows whose last event has arrived here

    def submit(self, prompt: list[int], settings: object, seed: object, tag: tuple[int, int]) -> None:
        deliver = lambda row, event: self.loop.call_soon_threadsafe(self.events.put_nowait, (row, event))
        self.rows.append(self.engine.submit(prompt, settings, seed, deliver, tag))

    @property
    def done(self) -> bool:
        return len(self.finished) == len(self.rows)

    async def next_event(self, timeout: float | None = None) -> tuple[Row, Event]:
        row, event = await asyncio.wait_for(self.events.get(), timeout)
        if event.finish_reason is not None:
            self.finished.add(row)
        return row, event

    def cancel(self) -> None:
        for row in self.rows:
            row.cancel()
        self.engine.wakeup.set()


def make_app(engine: Engine, encoder: Any, model_id: str, n_ctx: int, api_key: str | None = None,
             max_queue: int = 256, cors_origin: str | None = None) -> FastAPI:
    metrics = Metrics()
    worker = EngineThread(engine, metrics)
    app = FastAPI(title="GPT-2 in NumPy", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.on_startup.append(worker.start)
    app.router.on_shutdown.append(worker.stop)
    app.state.worker = worker
    n_vocab = engine.n_vocab
    created = int(time.time())
    if cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cors_origin], allow_methods=["*"], allow_headers=["*"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.status == 429 else None
        if request.url.path == "/v1/completions":
            metrics.requests.labels(str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:  # never a stack trace
        body = ApiError(500, "the server failed to handle this request", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "Incorrect API key provided: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", kind="authentication_error")

    async def json_body(request: Request) -> object:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({type(e).__name__})") from None

    def model_object() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "openai"}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return playground.page(model_id)

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request) -> dict:
        authorize(request)
        if name != model_id:
            raise ApiError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        return model_object()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        authorize(request)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise ApiError(400, 'send {"prompt": "some text"}', "prompt")
        tokens = openai_api.parse_prompts(body["prompt"], encoder.encode, n_vocab, encoder.eot_token)[0]
        return {"tokens": tokens, "count": len(tokens), "max_model_len": n_ctx}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        authorize(request)
        body = await json_body(request)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list):
            raise ApiError(400, 'send {"tokens": [token ids]}', "tokens")
        return {"prompt": encoder.decode(openai_api.parse_prompts(tokens, None, n_vocab, None)[0])}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorize(request)
        body = await json_body(request)
        parsed = openai_api.parse_completion_request(body, model_id, encoder.encode, n_vocab, n_ctx,
                                                     encoder.eot_token)
        n_rows = len(parsed.prompts) * parsed.best_of
        if engine.waiting.qsize() + n_rows > max_queue:
            raise ApiError(429, f"the server has more than {max_queue} rows waiting: try again shortly",
                           kind="rate_limit_error", code="rate_limit_exceeded")
        rows = Rows(engine, asyncio.get_running_loop())
        for prompt, settings, seed, tag in openai_api.request_rows(parsed):
            rows.submit(prompt, settings, seed, tag)
        metrics.tokens_in.inc(sum(map(len, parsed.prompts)))
        metrics.requests.labels("200").inc()
        response_id = openai_api.completion_id()
        if parsed.stream:
            return StreamingResponse(stream(rows, parsed, response_id), media_type="text/event-stream")
        try:
            await wait_for_rows(rows, request)
        finally:
            rows.cancel()  # a no-op for rows that are done; frees the rest if the client went away
        if any(row.continuation.finish_reason == "error" for row in rows.rows):
            raise ApiError(500, "the model failed on this request: see the server's log", kind="server_error")
        return JSONResponse(openai_api.completion_response(rows.rows, parsed, response_id, encoder))

    async def wait_for_rows(rows: Rows, request: Request) -> None:
        while not rows.done:
            try:
                await rows.next_event(DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return

    async def stream(rows: Rows, parsed: openai_api.CompletionRequest, response_id: str) -> AsyncIterator[str]:
        """Server-sent events: each row's text as it is settled, one chunk per step, then [DONE]."""
        settings, stamp = parsed.settings, int(time.time())  # every chunk of a stream has the same "created"
        sent = {row: 0 for row in rows.rows}  # characters of each row's text sent so far, for text_offset
        started: set[Row] = set()
        usage_field = {"usage": None} if parsed.include_usage else {}

        def chunk(row: Row, text: str, logprobs: dict | None, finish_reason: str | None) -> str:
            choice = openai_api.choice(row.tag[0] * parsed.n + row.tag[1], text, logprobs, finish_reason)
            body = {**openai_api.completion_object(response_id, parsed.model, [choice], None, stamp), **usage_field}
            sent[row] += len(text)
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def echo_chunk(row: Row) -> str:  # the prompt, once its logprobs are known (before the row's first event)
            logprobs = None
            if settings.logprobs is not None:
                logprobs = openai_api.logprobs_object(encoder.decode_bytes, row.prompt, [None, *row.prompt_logprobs],
                                                      [None, *row.prompt_top], settings.logprobs)
            return chunk(row, encoder.decode(row.prompt), logprobs, None)

        def event_chunk(row: Row, event: Event) -> str:
            logprobs = None
            kept = event.token is not None and (event.token != encoder.eot_token or settings.ignore_eos)
            if settings.logprobs is not None and kept:
                logprobs = openai_api.logprobs_object(encoder.decode_bytes, [event.token], [event.logprob],
                                                      [event.top], settings.logprobs, sent[row])
            return chunk(row, event.text, logprobs, event.finish_reason)

        try:
            while not rows.done:
                row, event = await rows.next_event()
                if event.finish_reason == "cancelled":
                    continue
                if event.finish_reason == "error":
                    error = ApiError(500, "the model failed on this request: see the server's log", kind="server_error")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    break
                if settings.echo and row not in started:
                    yield echo_chunk(row)
                started.add(row)
                yield event_chunk(row, event)
            if parsed.include_usage:
                n_generated = sum(len(row.continuation.tokens) for row in rows.rows)
                usage = openai_api.usage_object(sum(map(len, parsed.prompts)), n_generated)
                body = {**openai_api.completion_object(response_id, parsed.model, [], None, stamp), "usage": usage}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            rows.cancel()  # the client went away mid-stream, or the stream is complete: free any row left

    return app


class Server:
    """uvicorn's server, stopped by Ctrl-C or SIGTERM as a clean exit: it stops taking requests, gives those
    in flight GRACE_SECONDS to finish, then cancels them (uvicorn itself would raise the signal again)."""

    GRACE_SECONDS = 3

    def __init__(self, app: FastAPI, host: str, port: int):
        import uvicorn

        class QuietServer(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                self.should_exit = True

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=self.GRACE_SECONDS, lifespan="on")
        self.server = QuietServer(config)

    def run(self) -> None:
        self.server.run()
